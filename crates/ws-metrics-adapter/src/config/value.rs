//! Value parsers shared by every flag and file of the adapter (and of `ws-demo`): durations with
//! units, and YAML with limits. A leaf module: it imports nothing of the crate, so the flag
//! structs and file readers of other modules use it without an import cycle back to [`super`].

use std::time::Duration;

/// Parses a duration with units (`500ms`, `10s`, `2m`, `720h`, `1h 30m`): the value parser of
/// every duration flag of this crate and of `ws-demo`, so they all take the same spellings.
///
/// # Errors
/// A message with what is wrong and examples of what is accepted.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("{e} (examples: 500ms, 10s, 2m, 720h)"))
}

/// Deserializes a YAML file's text with the limits every YAML file read here gets: alias
/// expansion, nesting depth and event counts bounded (a file swapped under us may be hostile;
/// a billion-laughs file must not take the process down), and plain one-line errors with line
/// and column (no source snippets: the message goes into one log line or one flag error).
///
/// The budgets are sized for the largest pods file read, 16 MiB (`MAX_FILE_BYTES` of the
/// static pods file; about 100,000 entries of a dozen events each). Alias replay, the amplifier of a bomb, is held to 500,000 events: a generated file
/// uses no aliases, and 100,000 entries sharing one anchored `{app: ws}` label map (4 events
/// each) fit; a small file aliasing a large map thousands of times does not.
///
/// # Errors
/// The YAML error, naming the line and column.
pub fn from_yaml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, serde_saphyr::Error> {
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_events: 8_000_000,
            max_nodes: 4_000_000,
            max_depth: 64,
            max_aliases: 1_000_000,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: 500_000,
            max_replay_stack_depth: 16,
        },
        with_snippet: false,
    };
    serde_saphyr::from_str_with_options(text, options)
}

/// Deserializes `T`, taking an explicit YAML null (`pods:` with nothing after it) as
/// `T::default()`, as serde_yaml did for sequences and maps; serde-saphyr refuses a null there.
/// With `#[serde(deserialize_with = ...)]` alone, a missing field is still an error; add
/// `default` to allow that too.
///
/// # Errors
/// Those of `T`'s deserializer.
pub fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de> + Default,
{
    use serde::Deserialize as _;
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}
