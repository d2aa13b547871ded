//! PROXY protocol v1/v2: parsing headers from balancers, writing them to backends (to be written).
