//! Request paths: percent-decoding and normalization for routing and static files (to be written).
