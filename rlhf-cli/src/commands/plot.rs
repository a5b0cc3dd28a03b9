//! `rlhf plot`: learning curves of a run as SVG files, one per metric.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;

/// `rlhf plot` options.
#[derive(Args, Debug, Clone)]
pub struct PlotArgs {
    /// A run's output directory (or its metrics.jsonl).
    pub run: PathBuf,
    /// Where the SVGs go (default: RUN/plots).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// Writes the charts and lists them.
pub fn run(args: &PlotArgs) -> Result<()> {
    let (metrics, dir) = if args.run.is_dir() {
        (args.run.join("metrics.jsonl"), args.run.clone())
    } else {
        let dir = args.run.parent().map(PathBuf::from).unwrap_or_default();
        (args.run.clone(), dir)
    };
    if !metrics.is_file() {
        bail!(
            "{}: no metrics.jsonl (is it a run's output directory?)",
            metrics.display()
        );
    }
    let out = args.out.clone().unwrap_or_else(|| dir.join("plots"));
    let written = crate::plot::learning_curves(&metrics, &out)?;
    for p in &written {
        println!("{}", p.display());
    }
    Ok(())
}
