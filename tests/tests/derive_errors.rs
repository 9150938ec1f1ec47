//! Misuse of `#[derive(Record)]` fails to compile with a message at the
//! offending span; the expected messages are checked in as `tests/ui/*.stderr`.

#[test]
fn misuse_fails_to_compile_with_a_clear_message() {
    trybuild::TestCases::new().compile_fail("ui/*.rs");
}
