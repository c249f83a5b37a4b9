//! Number matching: the login page shows a number and the user proves they
//! see that page by typing it (`Enter`, the default, as NIST SP 800-63B rev 4
//! asks) or picking it among a few (`Choose`). Answers are compared in
//! constant time. A wrong number denies the challenge: allowing retries would
//! let a user who does not see the page guess.

use rand::Rng;
use subtle::ConstantTimeEq;

use crate::model::{NumberMatch, NumberMatchMode};

/// Digits in a code: two, as Microsoft Authenticator shows (1 in 90 to guess once).
pub const CODE_DIGITS: u32 = 2;
/// Numbers offered in `Choose` mode.
pub const CHOICES: usize = 3;

fn random_code(rng: &mut impl Rng) -> String {
    let lo = 10u32.pow(CODE_DIGITS - 1);
    let hi = 10u32.pow(CODE_DIGITS);
    rng.gen_range(lo..hi).to_string()
}

/// Draws a fresh code (and choices) for a new challenge.
pub fn generate(mode: NumberMatchMode) -> NumberMatch {
    let mut rng = rand::rngs::OsRng;
    match mode {
        NumberMatchMode::None => NumberMatch {
            mode,
            code: String::new(),
            choices: vec![],
        },
        NumberMatchMode::Enter => NumberMatch {
            mode,
            code: random_code(&mut rng),
            choices: vec![],
        },
        NumberMatchMode::Choose => {
            let code = random_code(&mut rng);
            let mut choices = vec![code.clone()];
            while choices.len() < CHOICES {
                let c = random_code(&mut rng);
                if !choices.contains(&c) {
                    choices.push(c);
                }
            }
            // Put the right one at a random position.
            let i = rng.gen_range(0..CHOICES);
            choices.swap(0, i);
            NumberMatch {
                mode,
                code,
                choices,
            }
        }
    }
}

/// Whether an approving answer carries the right number.
pub fn answer_matches(nm: &NumberMatch, answer: &str) -> bool {
    match nm.mode {
        NumberMatchMode::None => answer.is_empty(),
        NumberMatchMode::Choose | NumberMatchMode::Enter => {
            let a = answer.trim().as_bytes();
            let c = nm.code.as_bytes();
            a.len() == c.len() && bool::from(a.ct_eq(c))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choose_offers_distinct_numbers_including_the_code() {
        for _ in 0..200 {
            let nm = generate(NumberMatchMode::Choose);
            assert_eq!(nm.choices.len(), CHOICES);
            assert!(nm.choices.contains(&nm.code));
            let mut d = nm.choices.clone();
            d.dedup();
            d.sort();
            d.dedup();
            assert_eq!(d.len(), CHOICES);
        }
    }

    #[test]
    fn matching() {
        let nm = generate(NumberMatchMode::Enter);
        assert_eq!(nm.code.len(), 2);
        assert!(answer_matches(&nm, &nm.code));
        let wrong = if nm.code == "10" { "11" } else { "10" };
        assert!(!answer_matches(&nm, wrong));
        assert!(!answer_matches(&nm, ""));
        let none = generate(NumberMatchMode::None);
        assert!(answer_matches(&none, ""));
        assert!(!answer_matches(&none, "12"));
    }
}
