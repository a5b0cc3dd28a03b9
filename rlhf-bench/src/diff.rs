//! Two sweeps' findings side by side: a rerun on another machine, backend or set of kernels
//! against the committed report, say. Each claim's verdict and interval in both, and what moved:
//! a verdict that changed sign (reproduced in one, contradicted in the other) is a disagreement;
//! one that moved between inconclusive and reproduced or contradicted had an interval end near
//! zero.

use crate::findings::{Finding, findings};
use crate::stats::Verdict;
use crate::study::PointRecord;

/// How a claim's verdict in the second sweep stands to the first's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The same verdict.
    Same,
    /// Inconclusive in one, reproduced or contradicted in the other (or not run in one).
    Moved,
    /// Reproduced in one, contradicted in the other.
    SignChanged,
}

impl Change {
    /// The change between verdicts `a` and `b`.
    pub fn of(a: Verdict, b: Verdict) -> Change {
        use Verdict::{Contradicted, Reproduced};
        match (a, b) {
            _ if a == b => Change::Same,
            (Reproduced, Contradicted) | (Contradicted, Reproduced) => Change::SignChanged,
            _ => Change::Moved,
        }
    }

    /// Its word in the table.
    pub fn word(self) -> &'static str {
        match self {
            Change::Same => "same",
            Change::Moved => "moved",
            Change::SignChanged => "**sign changed**",
        }
    }
}

/// The findings of two sweeps, claim by claim.
#[derive(Debug, Clone)]
pub struct FindingsDiff {
    /// Each claim both sweeps state, as the first and the second sweep found it.
    pub pairs: Vec<(Finding, Finding)>,
}

impl FindingsDiff {
    /// The findings of `a` and of `b`, paired by axis and claim.
    pub fn of(a: &[PointRecord], b: &[PointRecord]) -> FindingsDiff {
        let theirs = findings(b);
        let pairs = findings(a)
            .into_iter()
            .filter_map(|f| {
                let g = theirs
                    .iter()
                    .find(|g| g.axis == f.axis && g.claim == f.claim)?;
                Some((f, g.clone()))
            })
            .collect();
        FindingsDiff { pairs }
    }

    /// How many claims have each kind of change.
    pub fn count(&self, change: Change) -> usize {
        self.pairs
            .iter()
            .filter(|(a, b)| Change::of(a.verdict, b.verdict) == change)
            .count()
    }

    /// The comparison as a markdown table, then one line of counts.
    pub fn markdown(&self) -> String {
        let cell = |f: &Finding| match f.interval {
            Some(i) => format!("{} {}", f.verdict.word(), i.show()),
            None => f.verdict.word().to_string(),
        };
        let mut s = String::from(
            "| axis | claim | first sweep | second sweep | change |\n| --- | --- | --- | --- | --- |\n",
        );
        for (a, b) in &self.pairs {
            s += &format!(
                "| {} | {} | {} | {} | {} |\n",
                a.axis,
                a.claim,
                cell(a),
                cell(b),
                Change::of(a.verdict, b.verdict).word()
            );
        }
        s += &format!(
            "\n{} claims: {} with the same verdict, {} moved between inconclusive and a verdict, {} changed sign.\n",
            self.pairs.len(),
            self.count(Change::Same),
            self.count(Change::Moved),
            self.count(Change::SignChanged)
        );
        s
    }
}
