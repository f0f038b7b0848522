//! sluice-testkit: throwaway database servers started from the installed
//! binaries (own data directory, own free port, replication settings),
//! stopped and removed when dropped. `sluice demo` and the integration
//! tests use the same code. No dependency on any other Sluice crate.

pub mod mycluster;
pub mod pgcluster;

pub use mycluster::MyCluster;
pub use pgcluster::{free_port, PgCluster};
