mod big_tx;
mod cli;
mod config;
mod crash;
mod pipelines;
mod stream;
mod streaming;
mod types;
