//! Property tests: the parser, instruction typing and lowering never panic and line ranges
//! stay consistent, whatever the input. Inputs are built from Dockerfile-shaped fragments so that they reach deep into the
//! parser (continuations, heredocs, directives, JSON, flags) rather than failing early.

use kiln_frontend::instructions::Dockerfile;
use kiln_frontend::lower::{BuildOptions, EmptyConfigs, lower};
use kiln_frontend::parser;
use proptest::prelude::*;

fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("FROM busybox AS b".to_string()),
        Just("RUN <<EOF".to_string()),
        Just("RUN <<-'E O'".to_string()),
        Just("COPY <<a <<b /dst/".to_string()),
        Just("EOF".to_string()),
        Just("\tEOF".to_string()),
        Just("# escape=`".to_string()),
        Just("# syntax=docker/dockerfile:1".to_string()),
        Just("\\".to_string()),
        Just("`".to_string()),
        Just("ENV a=\"b c\" d='e' f=g\\ h".to_string()),
        Just("ENV A".to_string()),
        Just("LABEL x".to_string()),
        Just("CMD [\"a\", \"b\"]".to_string()),
        Just("CMD [\"a\", 1]".to_string()),
        Just("CMD [".to_string()),
        Just("ONBUILD ONBUILD RUN x".to_string()),
        Just("HEALTHCHECK --interval=5s CMD true".to_string()),
        Just("RUN --mount=type=cache,target=/x \"--q\" -- y".to_string()),
        Just("COPY --from=\"a\\".to_string()),
        Just("ARG V=${X:-busybox}".to_string()),
        Just("FROM $V AS st".to_string()),
        Just("FROM st".to_string()),
        Just("COPY --from=st --link --chmod=0755 a* /d/".to_string()),
        Just("COPY --from=0 --parents x/./y /z".to_string()),
        Just("ADD --checksum=sha256:0 https://x/y /".to_string()),
        Just("RUN --mount=type=bind,from=st,target=x --network=none echo $V".to_string()),
        Just("WORKDIR ${V#b}/w".to_string()),
        Just("EXPOSE 80-7/udp".to_string()),
        Just("STOPSIGNAL RTMIN+3".to_string()),
        Just("\u{feff}\r".to_string()),
        "[ -~]{0,30}",
        "\\PC{0,12}",
    ]
}

fn document() -> impl Strategy<Value = String> {
    prop::collection::vec(
        (
            fragment(),
            prop::sample::select(vec!["\n", "\r\n", " \\\n", "", "`\n"]),
        ),
        0..24,
    )
    .prop_map(|parts| parts.into_iter().map(|(f, sep)| f + sep).collect())
}

/// 4,000 cases by default; `PROPTEST_CASES=N` runs longer (e.g. in release mode for a soak).
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4000);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn never_panics_and_lines_are_ordered(src in document()) {
        if let Ok(doc) = parser::parse(src.as_bytes()) {
            let total = src.split_inclusive('\n').count();
            let mut previous_end = 0;
            for node in &doc.nodes {
                prop_assert!(node.start_line > previous_end);
                prop_assert!(node.end_line >= node.start_line);
                prop_assert!(node.end_line <= total);
                previous_end = node.end_line;
            }
            let _ = doc.dump();
            if let Ok(stages) = Dockerfile::from_document(&doc) {
                let _ = lower(&stages, &BuildOptions::default(), &EmptyConfigs);
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = parser::parse(&bytes);
    }
}
