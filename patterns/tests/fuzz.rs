//! Arbitrary patterns and paths never panic the matcher or the glob.

use kiln_patterns::{MatchInfo, PatternMatcher, glob_match, read_ignore_file};
use proptest::prelude::*;

fn pattern_text() -> impl Strategy<Value = String> {
    proptest::string::string_regex(r"[!*?\[\]\\/a-c^\-.:&~{}()$é]{0,12}").unwrap()
}

proptest! {
    #[test]
    fn matcher_never_panics(patterns in proptest::collection::vec(pattern_text(), 0..4),
                            path in "[a-c*/.\\[\\]é-]{0,12}") {
        if let Ok(pm) = PatternMatcher::new(&patterns) {
            let direct = pm.matches_or_parent_matches(&path);
            prop_assert_eq!(direct, pm.matches_using_parent_results(&path, &MatchInfo::default()).0);
        }
        let _ = glob_match(&patterns.concat(), &path);
    }

    #[test]
    fn ignore_file_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = read_ignore_file(&bytes);
    }
}
