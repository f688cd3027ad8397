//! Mistakes the generated code turns into compile errors (trybuild): a
//! request or response of the wrong message type, a method the .proto does
//! not have.

#[test]
fn type_errors_are_compile_errors() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
