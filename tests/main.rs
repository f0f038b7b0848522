//! Sluice's integration tests: one binary, throwaway Postgres servers,
//! the real `sluice` executable. See `harness` for the helpers.

mod cases;
mod harness;
