//! JSON as the sink reads it: the canonical form and its hash, a tree that
//! borrows from the payload, and JSON pointers over either tree.

pub mod borrowed;
pub mod hash;
pub mod pointer;
