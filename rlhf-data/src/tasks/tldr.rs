//! `tldr-synth`: summarise a procedurally generated Reddit-style post (the TL;DR task, at laptop
//! scale).
//!
//! A post states facts of a small world — `alice owns red car`, `bob lives in oslo` — about
//! the title's subject (salient) and about other people (distractors), mixed with filler
//! sentences. The reference summary lists the salient facts in the order of the post, joined by
//! `; `, ending with `.`. The gold score rewards completeness and penalises hallucination,
//! unsalient facts, length beyond the reference's, malformed clauses and a missing EOS. Length
//! helps a proxy reward model (more facts tend to mean more recall) but not the gold score, so
//! over-optimisation can be observed.

use std::collections::BTreeSet;

use rand::Rng;
use rand::seq::{IndexedRandom, SliceRandom};

use super::{ChaCha8Rng, GoldScore, Task, prompt_rng, strip_eos};
use crate::sampling::Split;

const PEOPLE: &[&str] = &[
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory",
    "nina", "oscar", "peggy", "quinn", "rupert", "sybil", "trent", "uma", "victor",
];
const RELATIONS: &[&str] = &[
    "likes", "owns", "visited", "fixed", "sold", "painted", "borrowed", "lost",
];
const ADJECTIVES: &[&str] = &[
    "red", "old", "tiny", "shiny", "broken", "new", "wooden", "green",
];
const OBJECTS: &[&str] = &[
    "car", "boat", "guitar", "lamp", "bike", "piano", "camera", "clock", "tent", "kettle",
];
const PLACES: &[&str] = &[
    "paris", "oslo", "lima", "cairo", "tokyo", "quito", "perth", "dakar",
];
const SUBREDDITS: &[&str] = &[
    "relationships",
    "personalfinance",
    "tifu",
    "askreddit",
    "legaladvice",
    "advice",
];
const FILLER: &[&str] = &[
    "i do not know what to do",
    "this has been on my mind for weeks",
    "any advice is welcome",
    "sorry for the long post",
    "throwaway for obvious reasons",
    "it is a long story",
    "we talked about it last night",
];

/// The noise of the demonstrator, and the weights of the gold score.
#[derive(Debug, Clone)]
pub struct TldrSynth {
    /// Probability that the demonstrator drops each salient fact.
    pub drop_fact: f64,
    /// Probability that it adds a distractor fact from the post.
    pub add_distractor: f64,
    /// Probability that it adds a filler clause (not a fact).
    pub add_filler: f64,
    /// Gold penalty per hallucinated fact (a fact not in the post).
    pub hallucination_penalty: f64,
    /// Gold penalty per unsalient fact (in the post, not about the subject) or repeated fact.
    pub unsalient_penalty: f64,
    /// Gold penalty per word beyond the reference's length, as a share of that length.
    pub length_penalty: f64,
    /// Gold penalty for a missing EOS.
    pub missing_eos_penalty: f64,
}

impl Default for TldrSynth {
    fn default() -> Self {
        TldrSynth {
            drop_fact: 0.3,
            add_distractor: 0.4,
            add_filler: 0.25,
            hallucination_penalty: 0.5,
            unsalient_penalty: 0.15,
            length_penalty: 0.5,
            missing_eos_penalty: 1.0,
        }
    }
}

/// A fact of the world in its canonical clause form.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Fact(String);

fn random_fact(person: &str, rng: &mut ChaCha8Rng) -> Fact {
    if rng.random_bool(0.2) {
        Fact(format!("{person} lives in {}", PLACES.choose(rng).unwrap()))
    } else {
        Fact(format!(
            "{person} {} {} {}",
            RELATIONS.choose(rng).unwrap(),
            ADJECTIVES.choose(rng).unwrap(),
            OBJECTS.choose(rng).unwrap()
        ))
    }
}

/// Parses a clause as a fact of the world's grammar.
fn parse_fact(clause: &str) -> Option<Fact> {
    let w: Vec<&str> = clause.split_whitespace().collect();
    let ok = match w.as_slice() {
        [p, "lives", "in", place] => PEOPLE.contains(p) && PLACES.contains(place),
        [p, rel, adj, obj] => {
            PEOPLE.contains(p)
                && RELATIONS.contains(rel)
                && ADJECTIVES.contains(adj)
                && OBJECTS.contains(obj)
        }
        _ => false,
    };
    ok.then(|| Fact(w.join(" ")))
}

/// What the gold scorer reads off a prompt: the subject and the facts of the post, in order.
struct Post {
    subject: String,
    facts: Vec<Fact>,
}

fn parse_post(prompt: &str) -> Post {
    let subject = prompt
        .lines()
        .find_map(|l| l.strip_prefix("TITLE: "))
        .and_then(|t| {
            t.split_whitespace()
                .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()))
                .find(|w| PEOPLE.contains(w))
        })
        .unwrap_or("")
        .to_string();
    let body = prompt
        .lines()
        .find_map(|l| l.strip_prefix("POST: "))
        .unwrap_or("");
    let facts = body
        .split('.')
        .filter_map(|s| parse_fact(s.trim()))
        .collect();
    Post { subject, facts }
}

impl TldrSynth {
    fn salient(post: &Post) -> Vec<Fact> {
        post.facts
            .iter()
            .filter(|f| f.0.split(' ').next() == Some(post.subject.as_str()))
            .cloned()
            .collect()
    }

    fn summary(facts: &[String]) -> String {
        format!(" {}.", facts.join("; "))
    }
}

impl Task for TldrSynth {
    fn name(&self) -> &'static str {
        "tldr-synth"
    }

    fn prompt(&self, split: Split, index: u64) -> String {
        let mut rng = prompt_rng(self.name(), split, index);
        let mut people = PEOPLE.to_vec();
        people.shuffle(&mut rng);
        let subject = people[0];
        let others = &people[1..4];
        let mut facts: BTreeSet<Fact> = BTreeSet::new();
        let n_salient = rng.random_range(1..=3);
        while facts.len() < n_salient {
            facts.insert(random_fact(subject, &mut rng));
        }
        let mut sentences: Vec<String> = facts.iter().map(|f| f.0.clone()).collect();
        for _ in 0..rng.random_range(0..=2) {
            let f = random_fact(others.choose(&mut rng).unwrap(), &mut rng);
            if !sentences.contains(&f.0) {
                sentences.push(f.0);
            }
        }
        for _ in 0..rng.random_range(1..=2) {
            sentences.push(FILLER.choose(&mut rng).unwrap().to_string());
        }
        sentences.shuffle(&mut rng);
        let title = match rng.random_range(0..3) {
            0 => format!("{subject} and me, need advice"),
            1 => format!("what should i tell {subject}?"),
            _ => format!("update on {subject}"),
        };
        let post: Vec<String> = sentences.iter().map(|s| format!("{s}.")).collect();
        format!(
            "SUBREDDIT: r/{}\nTITLE: {title}\nPOST: {}\nTL;DR:",
            SUBREDDITS.choose(&mut rng).unwrap(),
            post.join(" ")
        )
    }

    fn reference(&self, prompt: &str) -> String {
        let post = parse_post(prompt);
        Self::summary(
            &Self::salient(&post)
                .into_iter()
                .map(|f| f.0)
                .collect::<Vec<_>>(),
        )
    }

    fn demonstrate(&self, prompt: &str, rng: &mut ChaCha8Rng) -> String {
        let post = parse_post(prompt);
        let salient = Self::salient(&post);
        let mut clauses: Vec<String> = salient
            .iter()
            .filter(|_| !rng.random_bool(self.drop_fact))
            .map(|f| f.0.clone())
            .collect();
        let distractors: Vec<&Fact> = post.facts.iter().filter(|f| !salient.contains(f)).collect();
        if !distractors.is_empty() && rng.random_bool(self.add_distractor) {
            let d = distractors.choose(rng).unwrap();
            clauses.insert(rng.random_range(0..=clauses.len()), d.0.clone());
        }
        if rng.random_bool(self.add_filler) {
            clauses.push(FILLER.choose(rng).unwrap().to_string());
        }
        if clauses.is_empty() {
            clauses.push(FILLER.choose(rng).unwrap().to_string());
        }
        Self::summary(&clauses)
    }

    /// Components: `completeness` (share of salient facts stated, in [0, 1]), `faithfulness`
    /// (−penalty per hallucinated fact, per unsalient fact, per repeat), `conciseness`
    /// (−penalty × words beyond the reference / reference words), `well_formedness` (−0.5 ×
    /// share of malformed clauses, −0.25 without the final `.`), `eos` (−penalty when missing).
    fn gold(&self, prompt: &str, response: &str) -> GoldScore {
        let post = parse_post(prompt);
        let salient = Self::salient(&post);
        let (body, has_eos) = strip_eos(response);
        let text = body.trim();
        let ends_with_period = text.ends_with('.');
        let clauses: Vec<&str> = text
            .trim_end_matches('.')
            .split(';')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        let mut seen: BTreeSet<Fact> = BTreeSet::new();
        let (mut malformed, mut hallucinated, mut unsalient, mut repeats) =
            (0usize, 0usize, 0usize, 0usize);
        for c in &clauses {
            match parse_fact(c) {
                None => malformed += 1,
                Some(f) if seen.contains(&f) => repeats += 1,
                Some(f) => {
                    if !post.facts.contains(&f) {
                        hallucinated += 1;
                    } else if !salient.contains(&f) {
                        unsalient += 1;
                    }
                    seen.insert(f);
                }
            }
        }
        let recalled = salient.iter().filter(|f| seen.contains(f)).count();
        let completeness = if salient.is_empty() {
            0.0
        } else {
            recalled as f64 / salient.len() as f64
        };
        let ideal_words = self.reference(prompt).split_whitespace().count().max(1);
        let words = text.split_whitespace().count();
        let excess = words.saturating_sub(ideal_words) as f64 / ideal_words as f64;
        let malformed_share = if clauses.is_empty() {
            1.0
        } else {
            malformed as f64 / clauses.len() as f64
        };
        GoldScore::from_parts(vec![
            ("completeness", completeness),
            (
                "faithfulness",
                -self.hallucination_penalty * hallucinated as f64
                    - self.unsalient_penalty * (unsalient + repeats) as f64,
            ),
            ("conciseness", -self.length_penalty * excess),
            (
                "well_formedness",
                -0.5 * malformed_share - if ends_with_period { 0.0 } else { 0.25 },
            ),
            (
                "eos",
                if has_eos {
                    0.0
                } else {
                    -self.missing_eos_penalty
                },
            ),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::with_eos;

    const PROMPT: &str = "SUBREDDIT: r/tifu\nTITLE: update on alice\nPOST: alice owns red car. i do not know what to do. bob lost old lamp. alice lives in oslo.\nTL;DR:";

    #[test]
    fn the_reference_lists_the_salient_facts_and_scores_best() {
        let t = TldrSynth::default();
        assert_eq!(
            t.reference(PROMPT),
            " alice owns red car; alice lives in oslo."
        );
        let perfect = t.gold(
            PROMPT,
            &with_eos(" alice owns red car; alice lives in oslo."),
        );
        assert_eq!(perfect.total, 1.0);
        assert_eq!(perfect.component("completeness"), 1.0);
        // order does not matter
        assert_eq!(
            t.gold(
                PROMPT,
                &with_eos(" alice lives in oslo; alice owns red car.")
            )
            .total,
            1.0
        );
    }

    #[test]
    fn hand_written_cases_rank_as_a_human_would() {
        let t = TldrSynth::default();
        let g = |r: &str| t.gold(PROMPT, &with_eos(r)).total;
        let perfect = g(" alice owns red car; alice lives in oslo.");
        let hallucinating = g(" alice owns red car; alice lives in oslo; alice sold new piano.");
        let incomplete = g(" alice owns red car.");
        let unsalient = g(" alice owns red car; bob lost old lamp; alice lives in oslo.");
        let rambling = g(" alice owns red car; alice lives in oslo; i do not know what to do.");
        assert!(
            perfect > hallucinating,
            "a perfect summary beats a hallucinating one"
        );
        assert!(perfect > incomplete && perfect > unsalient && perfect > rambling);
        assert!(
            unsalient > hallucinating,
            "a true but unsalient fact is a smaller fault than an invented one"
        );
        // padding with repeats adds length the gold scorer does not reward
        assert!(g(" alice owns red car; alice owns red car; alice lives in oslo.") < perfect);
        // missing EOS is penalised
        assert!(
            t.gold(PROMPT, " alice owns red car; alice lives in oslo.")
                .total
                <= perfect - 1.0
        );
        // garbage
        assert!(g(" the the the") < incomplete);
        assert!(g("") < incomplete);
    }

    #[test]
    fn the_gold_scorer_rewards_the_gold_score() {
        use rlhf_base::Scorer;
        let t = TldrSynth::default();
        let perfect = with_eos(&t.reference(PROMPT));
        let responses = [perfect.as_str(), " zed owns blue yacht.", ""];
        let scores = crate::tasks::GoldScorer(&t)
            .score(&[PROMPT; 3], &responses)
            .unwrap();
        for (score, response) in scores.iter().zip(responses) {
            assert_eq!(*score, t.gold(PROMPT, response).total as f32);
        }
        assert_eq!(scores[0], 1.0);
        assert!(scores[1] < scores[0] && scores[2] < scores[0], "{scores:?}");
        let short = crate::tasks::GoldScorer(&t).score(&[PROMPT; 3], &responses[..2]);
        assert!(short.is_err());
    }

    #[test]
    fn prompts_are_reproducible_and_splits_disjoint() {
        let t = TldrSynth::default();
        assert_eq!(t.prompt(Split::Train, 7), t.prompt(Split::Train, 7));
        let train: BTreeSet<String> = (0..300).map(|i| t.prompt(Split::Train, i)).collect();
        let eval: BTreeSet<String> = (0..300).map(|i| t.prompt(Split::Eval, i)).collect();
        let test: BTreeSet<String> = (0..300).map(|i| t.prompt(Split::Test, i)).collect();
        assert!(train.is_disjoint(&test));
        assert!(train.is_disjoint(&eval) && eval.is_disjoint(&test));
        for p in train.iter().take(50) {
            let post = parse_post(p);
            assert!(
                !post.subject.is_empty() && !TldrSynth::salient(&post).is_empty(),
                "{p}"
            );
        }
    }
}
