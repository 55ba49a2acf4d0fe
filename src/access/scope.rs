//! Scopes: what kind of upstream work a key may ask for.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    Chat,
    Code,
    Image,
    Audio,
    Embeddings,
    Files,
    FineTuning,
}

impl Scope {
    pub const ALL: [Scope; 7] = [
        Scope::Chat,
        Scope::Code,
        Scope::Image,
        Scope::Audio,
        Scope::Embeddings,
        Scope::Files,
        Scope::FineTuning,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scope::Chat => "chat",
            Scope::Code => "code",
            Scope::Image => "image",
            Scope::Audio => "audio",
            Scope::Embeddings => "embeddings",
            Scope::Files => "files",
            Scope::FineTuning => "fine_tuning",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|scope| scope.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|s| s.name()).collect();
                format!("unknown scope {s:?} (expected one of {})", names.join(", "))
            })
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of scopes as a bitmask: checking one is a single AND.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScopeSet(u8);

impl ScopeSet {
    pub fn insert(&mut self, scope: Scope) {
        self.0 |= scope.bit();
    }

    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.contains(*s))
    }
}

impl FromIterator<Scope> for ScopeSet {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        let mut set = ScopeSet::default();
        iter.into_iter().for_each(|s| set.insert(s));
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sets_hold_what_was_inserted() {
        for scope in Scope::ALL {
            assert_eq!(Scope::parse(scope.name()), Ok(scope));
        }
        assert!(Scope::parse("admin").unwrap_err().contains("fine_tuning"));
        let set: ScopeSet = [Scope::Chat, Scope::Files].into_iter().collect();
        assert!(set.contains(Scope::Chat) && set.contains(Scope::Files));
        assert!(!set.contains(Scope::Code));
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            vec![Scope::Chat, Scope::Files]
        );
    }
}
