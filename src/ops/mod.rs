//! What operators see: the counters and their endpoint ([`metrics`]) and
//! the access log ([`access_log`]). Each core writes its own counters and
//! log buffer; threads of their own read and write them, off the data path.

pub mod access_log;
pub mod ending;
pub mod metrics;
