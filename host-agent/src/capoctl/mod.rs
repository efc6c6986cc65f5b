//! capoctl's offline side: the seed demonstration.

pub mod demo;
