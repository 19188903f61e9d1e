//! The pieces of `cd-bench`: one file per measurement, the processes they run against, and the
//! statistics and table they report.

pub mod commit;
pub mod dispatch;
pub mod fsync;
pub mod logs;
pub mod node;
pub mod report;
pub mod stats;
