//! Limits shared by all cores (to be written).
