//! Type mapping between engines, Sluice's [`Value`](sluice_core::Value), Arrow
//! and JSON.
//!
//! - [`postgres`]: Postgres type OIDs → [`ColumnType`](sluice_core::ColumnType),
//!   and Postgres text forms (pgoutput text mode, `COPY ... TO STDOUT`) → `Value`.
//! - [`mysql`]: MySQL/MariaDB column types → `ColumnType` (the mapping table).
//! - [`json`]: `Value` and change events → Debezium-style JSON.
//! - [`arrow`]: `ColumnType` → Arrow data types.

pub mod arrow;
pub mod json;
pub mod mysql;
pub mod postgres;
pub mod target;
