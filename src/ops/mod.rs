//! What operators see: the counters and their endpoint ([`metrics`]), the
//! access log ([`access_log`]) and the error log's setup ([`errlog`]), the
//! escaping every log line's outside values go through ([`escape`]) and the
//! rate limit on lines clients can cause ([`ratelog`]). Each core writes its
//! own counters and log buffer; threads of their own read and write them,
//! off the data path.

pub mod access_log;
pub mod ending;
pub mod errlog;
pub mod escape;
pub mod metrics;
pub mod ratelog;
