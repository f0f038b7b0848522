//! Preflight findings shared by the sources' `sluice check` implementations.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Clone)]
pub struct Finding {
    pub status: Status,
    pub check: String,
    pub message: String,
}

/// Every check's finding, in order.
#[derive(Debug, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn push(&mut self, status: Status, check: &str, message: impl Into<String>) {
        self.findings.push(Finding { status, check: check.to_string(), message: message.into() });
    }
    pub fn failed(&self) -> bool {
        self.findings.iter().any(|f| f.status == Status::Fail)
    }
}
