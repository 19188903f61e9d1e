//! The pieces of `cd-bench`: one file per measurement, the processes they run against (one
//! coordinator, a 3-node cluster, an etcd cluster), the load driver, and the statistics and
//! table they report.

pub mod cluster;
pub mod commit;
pub mod dispatch;
pub mod etcd;
pub mod failover;
pub mod fsync;
pub mod load;
pub mod logs;
pub mod node;
pub mod replicated;
pub mod report;
pub mod stats;
