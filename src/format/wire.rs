//! The Confluent wire format (pure, no I/O).
//!
//! ```text
//! byte 0      magic byte, always 0
//! bytes 1..5  schema id, 4 bytes big-endian (the registry's global id)
//! Protobuf:   message-index list: zigzag varint count, then that many zigzag
//!             varint indexes (the path to the message type inside the .proto:
//!             top-level message, then nested messages); a count of 0 (one
//!             `0x00` byte) is the common shorthand for `[0]`, the first
//!             top-level message
//! rest        the body: Avro binary datum / Protobuf message / JSON text
//! ```
//!
//! The encoders are used by tests and test producers; they write exactly what
//! Confluent's Java and Python serializers write (including the `[0]`
//! shorthand).

use super::DecodeError;

/// Magic byte that starts every Confluent-framed message.
pub const MAGIC: u8 = 0;
/// Length of the magic byte + schema id prefix.
pub const HEADER_LEN: usize = 5;
/// Longest message-index path accepted (nesting depth); a guard against
/// garbage that happens to start with a plausible header.
pub const MAX_MESSAGE_INDEXES: usize = 64;

/// The schema id of a Confluent-framed message, without looking at the body.
pub fn schema_id(bytes: &[u8]) -> Result<u32, DecodeError> {
    Ok(split(bytes)?.0)
}

/// Splits a framed message into (schema id, everything after the header).
pub fn split(bytes: &[u8]) -> Result<(u32, &[u8]), DecodeError> {
    match bytes.first() {
        None => Err(DecodeError::NoMagicByte {
            reason: "empty message".into(),
        }),
        Some(&b) if b != MAGIC => Err(DecodeError::NoMagicByte {
            reason: format!("first byte is {b:#04x}, not the magic byte 0x00"),
        }),
        Some(_) if bytes.len() < HEADER_LEN => Err(DecodeError::NoMagicByte {
            reason: format!(
                "{} bytes: shorter than the 5-byte header (magic byte + schema id)",
                bytes.len()
            ),
        }),
        Some(_) => {
            let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
            Ok((id, &bytes[HEADER_LEN..]))
        }
    }
}

/// Reads the Protobuf message-index list at the start of `rest` (what
/// [`split`] returned) and returns it with the message body after it.
/// Errors are plain reasons; the caller adds the schema id.
pub fn split_message_indexes(rest: &[u8]) -> Result<(Vec<usize>, &[u8]), String> {
    let mut cur = rest;
    let count = read_zigzag(&mut cur).map_err(|e| format!("message-index count: {e}"))?;
    if count == 0 {
        return Ok((vec![0], cur));
    }
    if count < 0 || count as usize > MAX_MESSAGE_INDEXES {
        return Err(format!("message-index count {count} out of range"));
    }
    let mut indexes = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let i = read_zigzag(&mut cur).map_err(|e| format!("message index: {e}"))?;
        if i < 0 {
            return Err(format!("negative message index {i}"));
        }
        indexes.push(i as usize);
    }
    Ok((indexes, cur))
}

/// Frames a body: magic byte, schema id, body (Avro and JSON Schema).
pub fn encode(schema_id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.push(MAGIC);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Frames a Protobuf body with its message-index path (`[0]` is written as the
/// one-byte shorthand, like Confluent's serializers do).
pub fn encode_protobuf(schema_id: u32, message_indexes: &[usize], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + 1 + body.len());
    out.push(MAGIC);
    out.extend_from_slice(&schema_id.to_be_bytes());
    if message_indexes == [0] || message_indexes.is_empty() {
        out.push(0);
    } else {
        write_zigzag(&mut out, message_indexes.len() as i64);
        for &i in message_indexes {
            write_zigzag(&mut out, i as i64);
        }
    }
    out.extend_from_slice(body);
    out
}

fn read_zigzag(cur: &mut &[u8]) -> Result<i64, &'static str> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let Some((&b, rest)) = cur.split_first() else {
            return Err("truncated varint");
        };
        *cur = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(((v >> 1) as i64) ^ -((v & 1) as i64));
        }
    }
    Err("varint longer than 10 bytes")
}

fn write_zigzag(out: &mut Vec<u8>, n: i64) {
    let mut v = ((n << 1) ^ (n >> 63)) as u64;
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let framed = encode(0x0102_0304, b"body");
        assert_eq!(framed[..5], [0, 1, 2, 3, 4]);
        assert_eq!(schema_id(&framed).unwrap(), 0x0102_0304);
        assert_eq!(split(&framed).unwrap(), (0x0102_0304, &b"body"[..]));
        assert_eq!(split(&encode(7, b"")).unwrap(), (7, &b""[..]));
    }

    #[test]
    fn no_magic_byte() {
        for bad in [&b""[..], b"{\"a\":1}", &[0, 0, 1], &[1, 0, 0, 0, 1, 2]] {
            let e = schema_id(bad).unwrap_err();
            assert!(matches!(e, DecodeError::NoMagicByte { .. }), "{bad:?}: {e}");
            assert_eq!(e.schema_id(), None);
            assert_eq!(e.reason(), "no_magic_byte");
        }
        assert!(schema_id(b"{}").unwrap_err().to_string().contains("0x7b"));
    }

    #[test]
    fn message_indexes_round_trip() {
        for path in [
            vec![0],
            vec![1],
            vec![0, 2],
            vec![3, 0, 1],
            vec![200, 70000],
        ] {
            let framed = encode_protobuf(9, &path, b"xyz");
            let (id, rest) = split(&framed).unwrap();
            assert_eq!(id, 9);
            let (got, body) = split_message_indexes(rest).unwrap();
            assert_eq!(got, path);
            assert_eq!(body, b"xyz");
        }
        // The shorthand is one zero byte; [1] is count 1 (zigzag 2), index 1 (zigzag 2).
        assert_eq!(encode_protobuf(1, &[0], b"")[5..], [0]);
        assert_eq!(encode_protobuf(1, &[1], b"")[5..], [2, 2]);
        // An explicit [0] (count 1, index 0) also decodes.
        assert_eq!(
            split_message_indexes(&[2, 0, 9]).unwrap(),
            (vec![0], &[9][..])
        );
    }

    #[test]
    fn bad_message_indexes() {
        assert!(split_message_indexes(&[]).is_err());
        assert!(split_message_indexes(&[0x80]).is_err()); // truncated varint
        assert!(split_message_indexes(&[1]).is_err()); // count -1
        assert!(split_message_indexes(&[4, 2]).is_err()); // count 2, one index
        assert!(split_message_indexes(&[2, 1]).is_err()); // index -1
        assert!(split_message_indexes(&[0xfe, 0x01]).is_err()); // count 127
        assert!(split_message_indexes(&[0xff; 11]).is_err());
    }
}
