//! Writing text into XML, and reading text out of XML the same way wherever claimgate must (DeleteObjects bodies it
//! authorizes, store answers whose upload ids it binds): one definition of which references
//! are accepted, so two readers of ours can never disagree about a key.

use quick_xml::events::BytesRef;

/// The character a general reference stands for: XML's five predefined entities and
/// numeric character references. Anything else (a DTD-declared entity) is refused: its
/// meaning would come from a DTD, which claimgate never reads.
pub(crate) fn reference_char(r: &BytesRef<'_>) -> Result<char, String> {
    let name = r.decode().map_err(|e| format!("bad reference: {e}"))?;
    Ok(match name.as_ref() {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        other => match r.resolve_char_ref() {
            Ok(Some(c)) => c,
            _ => return Err(format!("unknown entity &{other};")),
        },
    })
}

/// Escapes text for an XML element.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => {}
            c => out.push(c),
        }
    }
    out
}
