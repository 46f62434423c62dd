//! `flowc`: the command-line front door.
fn main() {}
