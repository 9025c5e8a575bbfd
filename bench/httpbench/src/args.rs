//! A tiny `--key value` parser: the tools take a handful of options, no crate needed.

use std::collections::HashMap;
use std::str::FromStr;

#[derive(Debug, Default)]
pub struct Args {
    named: HashMap<String, String>,
    flags: Vec<String>,
    positional: Vec<String>,
}

/// Options that take no value.
const FLAGS: &[&str] = &["direct", "connect-only"];

impl Args {
    pub fn parse(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
        let mut a = Args::default();
        while let Some(s) = it.next() {
            match s.strip_prefix("--") {
                Some(k) if FLAGS.contains(&k) => a.flags.push(k.to_string()),
                Some(k) => {
                    let v = it.next().ok_or_else(|| format!("--{k} needs a value"))?;
                    a.named.insert(k.to_string(), v);
                }
                None => a.positional.push(s),
            }
        }
        Ok(a)
    }

    pub fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }

    pub fn opt<T: FromStr>(&self, name: &str) -> Result<Option<T>, String>
    where
        T::Err: std::fmt::Display,
    {
        self.named
            .get(name)
            .map(|v| v.parse::<T>().map_err(|e| format!("--{name} {v:?}: {e}")))
            .transpose()
    }

    pub fn req<T: FromStr>(&self, name: &str) -> Result<T, String>
    where
        T::Err: std::fmt::Display,
    {
        self.opt(name)?
            .ok_or_else(|| format!("--{name} is required"))
    }

    pub fn positional<T: FromStr>(&self, i: usize) -> Result<T, String>
    where
        T::Err: std::fmt::Display,
    {
        let v = self.positional.get(i).ok_or("missing argument")?;
        v.parse::<T>().map_err(|e| format!("{v:?}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Args, String> {
        Args::parse(s.split_whitespace().map(String::from))
    }

    #[test]
    fn named_flags_and_positional() {
        let a = parse("5 --bytes 100 --direct --target 127.0.0.1:9").expect("parses");
        assert_eq!(a.positional::<u32>(0), Ok(5));
        assert_eq!(a.req::<u64>("bytes"), Ok(100));
        assert!(a.flag("direct"));
        assert_eq!(a.opt::<u32>("count"), Ok(None));
        assert!(a.req::<u32>("count").is_err());
    }

    #[test]
    fn missing_value_and_bad_number() {
        assert!(parse("--bytes").is_err());
        let a = parse("--bytes lots").expect("parses");
        assert!(a.req::<u64>("bytes").is_err());
    }
}
