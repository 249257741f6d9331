use super::*;

fn s(text: &str) -> String {
    sanitize(text.as_bytes(), MAX_QUERY_TEXT)
}

#[test]
fn literals_become_placeholders() {
    assert_eq!(
        s("SELECT * FROM users WHERE id = 42 AND name = 'bob'"),
        "SELECT * FROM users WHERE id = ? AND name = ?"
    );
    assert_eq!(s("select 1.5e-3, .5, 0x1F, 1_000"), "select ?, ?, ?, ?");
    assert_eq!(
        s("SELECT 'it''s', E'a\\'b', x'ff', B'0101'"),
        "SELECT ?, ?, ?, ?"
    );
    assert_eq!(s("SELECT $$secret$$, $tag$a $$ b$tag$"), "SELECT ?, ?");
    assert_eq!(s("SELECT U&'d\\0061t'"), "SELECT ?");
    // Placeholders, identifiers with digits, quoted identifiers stay.
    assert_eq!(
        s("INSERT INTO t2 (\"Col1\", c_2) VALUES ($1, $2)"),
        "INSERT INTO t2 (\"Col1\", c_2) VALUES ($1, $2)"
    );
    // MySQL's double-quoted strings (with spaces) and backticks.
    assert_eq!(s("SELECT \"a secret\" FROM `t`"), "SELECT ? FROM `t`");
}

#[test]
fn comments_and_whitespace() {
    assert_eq!(
        s("SELECT  a -- id 7\n FROM /* user 'x' /* nested */ */ t\n\tWHERE b = 1 # mysql"),
        "SELECT a FROM t WHERE b = ?"
    );
    assert_eq!(s("   "), "");
}

#[test]
fn unterminated_and_binary_input_leaks_nothing() {
    assert_eq!(s("SELECT 'never closed secret"), "SELECT ?");
    assert_eq!(s("SELECT $$open"), "SELECT ?");
    assert_eq!(s("SELECT \u{e9}t\u{e9}"), "SELECT \u{e9}t\u{e9}");
    let out = sanitize(b"SELECT \xff\xfe secret", 100);
    assert!(!out.contains('\u{fffd}'), "{out}");
}

#[test]
fn bounded_at_token_boundaries() {
    let long = format!("SELECT {} FROM t", "col, ".repeat(1000));
    let out = sanitize(long.as_bytes(), 40);
    assert!(out.len() <= 40, "{out}");
    assert!(out.starts_with("SELECT col, col,"), "{out}");
}

#[test]
fn operation_and_collection() {
    let sum = |t: &str| {
        let x = summarize(t);
        (x.operation, x.collection)
    };
    let some = |a: &str, b: &str| (Some(a.to_owned()), Some(b.to_owned()));
    assert_eq!(
        sum("select * from users where id = ?"),
        some("SELECT", "users")
    );
    assert_eq!(
        sum("INSERT INTO public.orders (a) VALUES (?)"),
        some("INSERT", "public.orders")
    );
    assert_eq!(
        sum("UPDATE ONLY \"Items\" SET a = ?"),
        some("UPDATE", "Items")
    );
    assert_eq!(
        sum("DELETE FROM t WHERE x IN (SELECT y FROM u)"),
        some("DELETE", "t")
    );
    assert_eq!(sum("SELECT (SELECT 1 FROM a) FROM b"), some("SELECT", "b"));
    assert_eq!(sum("TRUNCATE TABLE logs"), some("TRUNCATE", "logs"));
    // Several tables, none, or not a table.
    assert_eq!(sum("SELECT * FROM a, b").1, None);
    assert_eq!(sum("SELECT * FROM a JOIN b ON a.id = b.id").1, None);
    assert_eq!(sum("SELECT * FROM (SELECT 1) AS x").1, None);
    assert_eq!(sum("SELECT ?"), (Some("SELECT".into()), None));
    assert_eq!(sum("BEGIN"), (Some("BEGIN".into()), None));
    assert_eq!(sum("(SELECT 1)"), (None, None));
    assert_eq!(sum(""), (None, None));
}
