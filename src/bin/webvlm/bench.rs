pub fn run(_args: &[String]) -> crate::CliResult { Err("bench: not yet implemented".into()) }
