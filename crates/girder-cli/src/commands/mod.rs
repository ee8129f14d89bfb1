//! One module per subcommand.

pub mod bench;
pub mod cache;
pub mod chat;
pub mod check;
pub mod convert;
pub mod download;
pub mod generate;
pub mod lock;
pub mod precision;
pub mod quantize;
pub mod run;
pub mod serve;
pub mod train;
