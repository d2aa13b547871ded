//! Moving bytes and bounding time: the tunnel's transfers ([`tunnel`]), the
//! per-core timeouts ([`sweep`]), and the drain's close frames ([`drain`]).

pub mod drain;
pub mod frames;
pub mod meter;
pub mod ring;
pub mod sweep;
pub mod tunnel;
