//! Static files for `--static` routes (to be written).
