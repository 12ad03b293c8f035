// Admin-API helper for scripts/kafka-cluster.sh (compiled once against the cached
// Kafka jars). Every command prints ONE line of JSON (or a bare integer for
// `controller`) on stdout; diagnostics go to stderr. Exit 0 on success, 1 on
// timeout/failure.
//
//   wait-ready BOOTSTRAP BROKERS TOPIC TIMEOUT_MS   BROKERS unfenced brokers, TOPIC
//                                                   (created RF=BROKERS if missing) fully in sync
//   wait-broker BOOTSTRAP ID TIMEOUT_MS             broker ID registered and unfenced
//   wait-isr BOOTSTRAP TIMEOUT_MS [TOPIC...]        every partition (of TOPICs, default all
//                                                   incl. internal) has isr == replicas
//   wait-leaders BOOTSTRAP TOPIC TIMEOUT_MS [NOT_ID] every partition has a leader (!= NOT_ID)
//   leaders BOOTSTRAP TOPIC                         {"topic":..,"leaders":{"0":1,..},"isr":{..},"replicas":{..}}
//   controller BOOTSTRAP TIMEOUT_MS                 active KRaft controller id (quorum leader)
//   quorum BOOTSTRAP                                quorum leader, epoch, voters with lag
//   brokers BOOTSTRAP                               registered brokers with fenced state
//   create-topic BOOTSTRAP TOPIC PARTITIONS [RF] [k=v...]  idempotent; waits for leaders
import java.util.*;
import java.util.concurrent.ExecutionException;
import org.apache.kafka.clients.admin.*;
import org.apache.kafka.common.Node;
import org.apache.kafka.common.TopicPartitionInfo;
import org.apache.kafka.common.errors.TopicExistsException;

public class KafkaClusterTool {
  static Admin admin(String bootstrap) {
    Properties p = new Properties();
    p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    p.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "2000");
    p.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "4000");
    p.put(AdminClientConfig.RECONNECT_BACKOFF_MS_CONFIG, "100");
    p.put(AdminClientConfig.RECONNECT_BACKOFF_MAX_MS_CONFIG, "500");
    p.put(AdminClientConfig.RETRY_BACKOFF_MS_CONFIG, "100");
    p.put(AdminClientConfig.METADATA_MAX_AGE_CONFIG, "1000");
    p.put(AdminClientConfig.CLIENT_ID_CONFIG, "kafka-cluster-tool");
    return Admin.create(p);
  }

  static String ints(Collection<Node> nodes) {
    StringJoiner j = new StringJoiner(",", "[", "]");
    for (Node n : nodes) j.add(Integer.toString(n.id()));
    return j.toString();
  }

  static Set<Integer> ids(Collection<Node> nodes) {
    Set<Integer> s = new TreeSet<>();
    for (Node n : nodes) s.add(n.id());
    return s;
  }

  static Map<String, TopicDescription> describe(Admin a, Collection<String> topics) throws Exception {
    return a.describeTopics(topics).allTopicNames().get();
  }

  static String leadersJson(String topic, TopicDescription d) {
    StringJoiner l = new StringJoiner(",", "{", "}");
    StringJoiner i = new StringJoiner(",", "{", "}");
    StringJoiner r = new StringJoiner(",", "{", "}");
    for (TopicPartitionInfo p : d.partitions()) {
      int leader = p.leader() == null || p.leader().isEmpty() ? -1 : p.leader().id();
      l.add("\"" + p.partition() + "\":" + leader);
      i.add("\"" + p.partition() + "\":" + ints(p.isr()));
      r.add("\"" + p.partition() + "\":" + ints(p.replicas()));
    }
    return "{\"topic\":\"" + topic + "\",\"leaders\":" + l + ",\"isr\":" + i + ",\"replicas\":" + r + "}";
  }

  static Collection<Node> brokers(Admin a) throws Exception {
    return a.describeCluster(new DescribeClusterOptions().includeFencedBrokers(true)).nodes().get();
  }

  static void sleep(long ms) {
    try { Thread.sleep(ms); } catch (InterruptedException e) { Thread.currentThread().interrupt(); }
  }

  static String why(Throwable e) {
    Throwable c = e instanceof ExecutionException && e.getCause() != null ? e.getCause() : e;
    return c.getClass().getSimpleName() + ": " + c.getMessage();
  }

  public static void main(String[] args) throws Exception {
    if (args.length < 2) { System.err.println("usage: see source"); System.exit(2); }
    String cmd = args[0];
    String bootstrap = args[1];
    long start = System.currentTimeMillis();
    try (Admin a = admin(bootstrap)) {
      switch (cmd) {
        case "wait-ready": {
          int want = Integer.parseInt(args[2]);
          String topic = args[3];
          long deadline = start + Long.parseLong(args[4]);
          String last = "";
          while (System.currentTimeMillis() < deadline) {
            try {
              Collection<Node> ns = brokers(a);
              long unfenced = ns.stream().filter(n -> !n.isFenced()).count();
              if (unfenced < want) { last = "unfenced brokers " + unfenced + "/" + want; sleep(200); continue; }
              try {
                a.createTopics(List.of(new NewTopic(topic, want, (short) want))).all().get();
              } catch (ExecutionException e) {
                if (!(e.getCause() instanceof TopicExistsException)) throw e;
              }
              TopicDescription d = describe(a, List.of(topic)).get(topic);
              boolean ok = !d.partitions().isEmpty();
              for (TopicPartitionInfo p : d.partitions())
                ok &= p.leader() != null && !p.leader().isEmpty() && p.isr().size() == want;
              if (ok) {
                System.out.println("{\"ready\":true,\"brokers\":" + ints(ns) + ",\"ms\":"
                    + (System.currentTimeMillis() - start) + "}");
                return;
              }
              last = "probe topic not fully in sync: " + leadersJson(topic, d);
            } catch (Exception e) { last = why(e); }
            sleep(200);
          }
          System.err.println("[kafka-cluster] not ready: " + last);
          System.out.println("{\"ready\":false}");
          System.exit(1);
        }
        case "wait-broker": {
          int id = Integer.parseInt(args[2]);
          long deadline = start + Long.parseLong(args[3]);
          String last = "";
          while (System.currentTimeMillis() < deadline) {
            try {
              for (Node n : brokers(a))
                if (n.id() == id && !n.isFenced()) {
                  System.out.println("{\"broker\":" + id + ",\"unfenced\":true,\"ms\":" + (System.currentTimeMillis() - start) + "}");
                  return;
                }
              last = "broker " + id + " not unfenced yet";
            } catch (Exception e) { last = why(e); }
            sleep(200);
          }
          System.err.println("[kafka-cluster] " + last);
          System.out.println("{\"broker\":" + id + ",\"unfenced\":false}");
          System.exit(1);
        }
        case "wait-isr": {
          long deadline = start + Long.parseLong(args[2]);
          List<String> topics = new ArrayList<>(Arrays.asList(args).subList(3, args.length));
          String last = "";
          while (System.currentTimeMillis() < deadline) {
            try {
              Collection<String> ts = topics.isEmpty()
                  ? a.listTopics(new ListTopicsOptions().listInternal(true)).names().get() : topics;
              boolean ok = true;
              int parts = 0;
              for (Map.Entry<String, TopicDescription> e : describe(a, ts).entrySet())
                for (TopicPartitionInfo p : e.getValue().partitions()) {
                  parts++;
                  if (p.leader() == null || p.leader().isEmpty() || !ids(p.isr()).equals(ids(p.replicas()))) {
                    ok = false;
                    last = e.getKey() + "-" + p.partition() + " isr " + ints(p.isr()) + " replicas " + ints(p.replicas());
                  }
                }
              if (ok) {
                System.out.println("{\"in_sync\":true,\"partitions\":" + parts + ",\"ms\":" + (System.currentTimeMillis() - start) + "}");
                return;
              }
            } catch (Exception e) { last = why(e); }
            sleep(200);
          }
          System.err.println("[kafka-cluster] not in sync: " + last);
          System.out.println("{\"in_sync\":false}");
          System.exit(1);
        }
        case "wait-leaders": {
          String topic = args[2];
          long deadline = start + Long.parseLong(args[3]);
          int not = args.length > 4 ? Integer.parseInt(args[4]) : -1;
          String last = "";
          while (System.currentTimeMillis() < deadline) {
            try {
              TopicDescription d = describe(a, List.of(topic)).get(topic);
              boolean ok = true;
              for (TopicPartitionInfo p : d.partitions())
                ok &= p.leader() != null && !p.leader().isEmpty() && p.leader().id() != not;
              last = leadersJson(topic, d);
              if (ok) {
                System.out.println(last.substring(0, last.length() - 1) + ",\"ms\":" + (System.currentTimeMillis() - start) + "}");
                return;
              }
            } catch (Exception e) { last = why(e); }
            sleep(100);
          }
          System.err.println("[kafka-cluster] leaders not moved: " + last);
          System.exit(1);
        }
        case "leaders": {
          String topic = args[2];
          System.out.println(leadersJson(topic, describe(a, List.of(topic)).get(topic)));
          return;
        }
        case "controller": {
          long deadline = start + (args.length > 2 ? Long.parseLong(args[2]) : 10000);
          String last = "";
          while (System.currentTimeMillis() < deadline) {
            try {
              QuorumInfo q = a.describeMetadataQuorum().quorumInfo().get();
              if (q.leaderId() >= 0) { System.out.println(q.leaderId()); return; }
              last = "no quorum leader";
            } catch (Exception e) { last = why(e); }
            sleep(200);
          }
          System.err.println("[kafka-cluster] controller unknown: " + last);
          System.exit(1);
        }
        case "quorum": {
          QuorumInfo q = a.describeMetadataQuorum().quorumInfo().get();
          StringJoiner v = new StringJoiner(",", "[", "]");
          for (QuorumInfo.ReplicaState r : q.voters())
            v.add("{\"id\":" + r.replicaId() + ",\"log_end_offset\":" + r.logEndOffset()
                + ",\"lag\":" + (q.highWatermark() - r.logEndOffset()) + "}");
          System.out.println("{\"leader\":" + q.leaderId() + ",\"epoch\":" + q.leaderEpoch()
              + ",\"high_watermark\":" + q.highWatermark() + ",\"voters\":" + v + "}");
          return;
        }
        case "create-topic": {
          String topic = args[2];
          int parts = Integer.parseInt(args[3]);
          short rf = args.length > 4 ? Short.parseShort(args[4]) : 3;
          Map<String, String> cfg = new HashMap<>();
          for (int k = 5; k < args.length; k++) {
            String[] kv = args[k].split("=", 2);
            cfg.put(kv[0], kv[1]);
          }
          boolean created = true;
          try {
            a.createTopics(List.of(new NewTopic(topic, parts, rf).configs(cfg))).all().get();
          } catch (ExecutionException e) {
            if (!(e.getCause() instanceof TopicExistsException)) throw e;
            created = false;
          }
          long deadline = start + 30000;
          while (true) {
            try {
              TopicDescription d = describe(a, List.of(topic)).get(topic);
              boolean ok = true;
              for (TopicPartitionInfo p : d.partitions()) ok &= p.leader() != null && !p.leader().isEmpty();
              if (ok) {
                String l = leadersJson(topic, d);
                System.out.println(l.substring(0, l.length() - 1) + ",\"created\":" + created + "}");
                return;
              }
            } catch (Exception e) {
              if (System.currentTimeMillis() > deadline) throw e;
            }
            if (System.currentTimeMillis() > deadline) { System.err.println("[kafka-cluster] no leaders for " + topic); System.exit(1); }
            sleep(100);
          }
        }
        case "brokers": {
          StringJoiner j = new StringJoiner(",", "[", "]");
          for (Node n : brokers(a))
            j.add("{\"id\":" + n.id() + ",\"port\":" + n.port() + ",\"fenced\":" + n.isFenced() + "}");
          System.out.println(j);
          return;
        }
        default:
          System.err.println("unknown command " + cmd);
          System.exit(2);
      }
    } catch (ExecutionException e) {
      System.err.println("[kafka-cluster] " + why(e));
      System.exit(1);
    }
  }
}
