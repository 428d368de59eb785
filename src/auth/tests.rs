use super::*;

#[test]
fn bearer_token_then_cookie() {
    let mut h = HeaderMap::new();
    assert!(matches!(find_token(&h, Some("tok")), Found::None));
    h.insert(header::COOKIE, HeaderValue::from_static("a=b; tok=xyz"));
    assert!(matches!(find_token(&h, Some("tok")), Found::Token("xyz")));
    assert!(matches!(find_token(&h, None), Found::None));
    h.insert(
        header::AUTHORIZATION,
        HeaderValue::from_static("bearer abc"),
    );
    assert!(matches!(find_token(&h, Some("tok")), Found::Token("abc")));
    h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
    assert!(matches!(find_token(&h, None), Found::Bad));
    h.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
    assert!(matches!(find_token(&h, None), Found::Bad));
    let mut basic = HeaderMap::new();
    basic.insert(
        header::AUTHORIZATION,
        HeaderValue::from_static("Basic dTpw"),
    );
    assert!(matches!(find_token(&basic, None), Found::None));
}

#[test]
fn scope_is_a_space_separated_list() {
    let v = Value::from("orders:read orders:write");
    assert!(has_value(&v, "orders:write", true));
    assert!(!has_value(&v, "orders:write", false));
    assert!(!has_value(
        &Value::from("orders:writer"),
        "orders:write",
        true
    ));
    assert!(has_value(&serde_json::json!(["a", "b"]), "b", false));
    assert!(has_value(&Value::from(true), "true", false));
}

#[test]
fn claims_become_header_values_or_nothing() {
    assert_eq!(header_value(&Value::from("u1")).unwrap(), "u1");
    assert_eq!(header_value(&Value::from(7)).unwrap(), "7");
    assert_eq!(header_value(&serde_json::json!(["a", "b"])).unwrap(), "a,b");
    assert!(header_value(&Value::from("a\nb")).is_none());
    assert!(header_value(&Value::Null).is_none());
}
