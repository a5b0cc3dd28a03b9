//! Preference records: a prompt, a preferred (`chosen`) and a dispreferred (`rejected`) response.

use serde::{Deserialize, Serialize};

/// The speaker tag that starts every assistant turn of an HH-RLHF transcript.
pub const ASSISTANT_TAG: &str = "\n\nAssistant:";

/// One comparison: `chosen ≻ rejected` as responses to `prompt` (TRL's "standard" preference
/// layout, with an explicit prompt).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreferenceRecord {
    /// The conversation up to and including the tag of the turn being answered.
    pub prompt: String,
    /// The preferred response (text after the prompt).
    pub chosen: String,
    /// The dispreferred response.
    pub rejected: String,
}

/// Splits two full transcripts that share an implicit prompt (HH-RLHF's `{chosen, rejected}`
/// layout) into prompt and responses.
///
/// The prompt is the longest common prefix of the two transcripts cut back to the end of its last
/// `\n\nAssistant:` tag, so the responses start right after the tag (with the leading space HH-RLHF
/// keeps). Returns `Err` with what is wrong when the transcripts share no assistant turn.
pub fn split_implicit_prompt(chosen: &str, rejected: &str) -> Result<PreferenceRecord, String> {
    let common = chosen
        .char_indices()
        .zip(rejected.chars())
        .find(|((_, a), b)| a != b)
        .map(|((i, _), _)| i)
        .unwrap_or_else(|| chosen.len().min(rejected.len()));
    let shared = &chosen[..common];
    let Some(tag) = shared.rfind(ASSISTANT_TAG) else {
        return Err(format!(
            "chosen and rejected share no `{}` turn",
            ASSISTANT_TAG.trim()
        ));
    };
    let cut = tag + ASSISTANT_TAG.len();
    Ok(PreferenceRecord {
        prompt: chosen[..cut].to_string(),
        chosen: chosen[cut..].to_string(),
        rejected: rejected[cut..].to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prompt_ends_at_the_last_shared_assistant_tag() {
        // The responses share a first word: the prompt must still stop at the tag.
        let c = "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: Sure, here";
        let r = "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: Sure thing";
        let rec = split_implicit_prompt(c, r).unwrap();
        assert_eq!(
            rec.prompt,
            "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant:"
        );
        assert_eq!(rec.chosen, " Sure, here");
        assert_eq!(rec.rejected, " Sure thing");
        assert_eq!(format!("{}{}", rec.prompt, rec.chosen), c);
    }

    #[test]
    fn identical_and_unrelated_transcripts() {
        let same = "\n\nHuman: x\n\nAssistant: y";
        let rec = split_implicit_prompt(same, same).unwrap();
        assert_eq!((rec.chosen.as_str(), rec.rejected.as_str()), (" y", " y"));
        assert!(split_implicit_prompt("Human: x", "Human: y").is_err());
        // multi-byte characters right at the divergence point
        let rec = split_implicit_prompt(
            "\n\nHuman: é\n\nAssistant: ü",
            "\n\nHuman: é\n\nAssistant: ö",
        )
        .unwrap();
        assert_eq!(rec.chosen, " ü");
    }

    #[test]
    fn json_round_trip_keeps_the_trl_field_names() {
        let rec = PreferenceRecord {
            prompt: "p".into(),
            chosen: "c".into(),
            rejected: "r".into(),
        };
        let json = serde_json::to_string(&rec).unwrap();
        assert_eq!(json, r#"{"prompt":"p","chosen":"c","rejected":"r"}"#);
        assert_eq!(
            serde_json::from_str::<PreferenceRecord>(&json).unwrap(),
            rec
        );
    }
}
