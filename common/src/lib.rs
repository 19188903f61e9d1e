//! Pieces every Conveyor crate shares: the pipeline spec, identities and certificates, TLS
//! configuration, time, and telemetry setup. No networking loops live here.

pub mod certs;
pub mod duration;
pub mod logcodec;
pub mod names;
pub mod secrets;
pub mod spec;
pub mod telemetry;
pub mod time;
pub mod tls;
