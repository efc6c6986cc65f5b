//! capoctl's offline side: the seed demonstration, and installing files from an
//! image without a shell.

pub mod demo;
pub mod install;
