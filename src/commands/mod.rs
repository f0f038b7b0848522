//! One module per command.

pub(crate) mod check;
pub(crate) mod demo;
pub(crate) mod run;
pub(crate) mod status;
pub(crate) mod teardown;
pub(crate) mod verify;
