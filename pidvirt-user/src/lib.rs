//! pidvirt: a run-time check on process ids crossing pid-namespace boundaries.
pub mod api;
pub mod audit;
pub mod btf;
pub mod cli;
pub mod client;
pub mod containers;
pub mod daemon;
pub mod files;
pub mod kernel;
pub mod loader;
pub mod preemption;
pub mod procscan;
pub mod restore;
pub mod runtimes;
pub mod seed;
pub mod server;
