//! A command's options from three places, later ones winning: the defaults, an optional
//! `--config FILE.toml`, and the flags on the command line.
//!
//! Each command's options are one struct that is both a `clap` argument set and a `serde`
//! value whose keys are the flags' names in snake case (`--learning-rate` ↔ `learning_rate`), so
//! a config file and `--print-config` speak the same names as the flags. A key of the file that
//! no flag has is an error that names the closest one; a flag given on the command line wins over
//! the file. TRL's spellings with underscores (`--learning_rate`) are accepted as well.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use clap::ArgMatches;
use clap::parser::ValueSource;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// The two options every training command has besides its own.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ConfigArgs {
    /// A TOML file of options (keys as the flags without `--`, in snake case); flags override it.
    #[arg(long, value_name = "FILE.toml")]
    pub config: Option<PathBuf>,
    /// Print the fully resolved options as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// `--foo_bar` → `--foo-bar` (and `--foo_bar=x` → `--foo-bar=x`) for every argument before a
/// lone `--`, so TRL's flag spellings work.
pub fn normalise_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut after_separator = false;
    args.into_iter()
        .map(|a| {
            if after_separator {
                return a;
            }
            let Some(s) = a.to_str() else { return a };
            if s == "--" {
                after_separator = true;
                return a;
            }
            match s.strip_prefix("--") {
                Some(rest) => {
                    let (name, value) = match rest.split_once('=') {
                        Some((n, v)) => (n, Some(v)),
                        None => (rest, None),
                    };
                    let name = name.replace('_', "-");
                    OsString::from(match value {
                        Some(v) => format!("--{name}={v}"),
                        None => format!("--{name}"),
                    })
                }
                None => a,
            }
        })
        .collect()
}

/// The closest of `known` to `key`, when one is close enough to be a likely misspelling.
pub fn closest<'a>(key: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    known
        .into_iter()
        .map(|k| (strsim::jaro_winkler(key, k), k))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}

/// `parsed` (the flags, with clap's defaults for the rest) merged over `config`'s keys: a key
/// the file sets wins over a default, a flag given on the command line wins over the file.
pub fn resolve<T: Serialize + DeserializeOwned>(
    parsed: &T,
    matches: &ArgMatches,
    config: Option<&Path>,
) -> Result<T> {
    let mut merged = match serde_json::to_value(parsed)? {
        Value::Object(o) => o,
        _ => bail!("options must serialise as a table"),
    };
    if let Some(path) = config {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the config file {}", path.display()))?;
        let table: toml::Table =
            toml::from_str(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        for key in table.keys() {
            if !merged.contains_key(key) {
                let hint = closest(key, merged.keys().map(String::as_str))
                    .map(|k| format!("; did you mean `{k}`?"))
                    .unwrap_or_default();
                bail!("{}: unknown key `{key}`{hint}", path.display());
            }
        }
        // the file's types, checked with its line and column
        toml::from_str::<T>(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        for (key, value) in table {
            // (`try_get_raw` first: `value_source` panics on an id that is not an argument)
            let from_flag = matches.try_get_raw(&key).is_ok_and(|v| v.is_some())
                && matches.value_source(&key) == Some(ValueSource::CommandLine);
            if !from_flag {
                merged.insert(key, serde_json::to_value(value)?);
            }
        }
    }
    Ok(serde_json::from_value(Value::Object(merged))?)
}

/// The options as TOML, for `--print-config` and the run directory's record: every key with its
/// value, and the unset optional ones as comments.
pub fn to_toml<T: Serialize>(options: &T) -> Result<String> {
    let Value::Object(map) = serde_json::to_value(options)? else {
        bail!("options must serialise as a table");
    };
    let (set, unset): (Map<String, Value>, Map<String, Value>) =
        map.into_iter().partition(|(_, v)| !v.is_null());
    // an f32 option serialises through f64 (0.2 → 0.20000000298023224): print the shortest
    // decimal that reads back as the same f32
    let set: Map<String, Value> = set
        .into_iter()
        .map(|(k, v)| match v.as_f64() {
            Some(x) if v.is_f64() && f64::from(x as f32) == x => {
                let short: f64 = (x as f32).to_string().parse().unwrap_or(x);
                (k, Value::from(short))
            }
            _ => (k, v),
        })
        .collect();
    let mut text = toml::to_string(&set)?;
    for key in unset.keys() {
        text.push_str(&format!("# {key} = (not set)\n"));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches, Parser};
    use serde::Deserialize;

    #[derive(Parser, Serialize, Deserialize, Debug, PartialEq)]
    #[serde(default)]
    struct Opts {
        #[arg(long, default_value_t = 1e-3)]
        learning_rate: f64,
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
        #[arg(long)]
        model: Option<String>,
    }

    impl Default for Opts {
        fn default() -> Self {
            Opts::parse_from(["x"])
        }
    }

    fn parse(args: &[&str]) -> (Opts, ArgMatches) {
        let argv = normalise_args(
            std::iter::once("x")
                .chain(args.iter().copied())
                .map(OsString::from),
        );
        let m = Opts::command().get_matches_from(argv);
        (Opts::from_arg_matches(&m).unwrap(), m)
    }

    #[test]
    fn defaults_then_the_file_then_the_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "learning_rate = 0.5\nmodel = \"m\"\n").unwrap();
        let (o, m) = parse(&["--batch_size", "4"]);
        let r = resolve(&o, &m, Some(&file)).unwrap();
        assert_eq!(
            (r.learning_rate, r.batch_size, r.model.as_deref()),
            (0.5, 4, Some("m"))
        );
        let (o, m) = parse(&["--learning-rate=0.25"]);
        let r = resolve(&o, &m, Some(&file)).unwrap();
        assert_eq!(r.learning_rate, 0.25, "a flag wins over the file");
        let r = resolve(&o, &m, None).unwrap();
        assert_eq!((r.batch_size, r.model), (8, None));
    }

    #[test]
    fn an_unknown_or_mistyped_key_is_an_error_naming_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        let (o, m) = parse(&[]);
        std::fs::write(&file, "lerning_rate = 0.5\n").unwrap();
        let e = resolve(&o, &m, Some(&file)).unwrap_err().to_string();
        assert!(
            e.contains("unknown key `lerning_rate`") && e.contains("`learning_rate`"),
            "{e}"
        );
        std::fs::write(&file, "batch_size = \"four\"\n").unwrap();
        let e = resolve(&o, &m, Some(&file)).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("batch_size"), "{e}");
    }

    #[test]
    fn the_printed_config_reads_back_as_the_same_options() {
        let (o, _) = parse(&["--batch-size", "3"]);
        let text = to_toml(&o).unwrap();
        assert!(
            text.contains("batch_size = 3") && text.contains("# model = (not set)"),
            "{text}"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, &text).unwrap();
        let (d, dm) = parse(&[]);
        assert_eq!(resolve(&d, &dm, Some(&file)).unwrap(), o);
    }
}
