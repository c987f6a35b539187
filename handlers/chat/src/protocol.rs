//! The chat protocol's pure parts: what a line from a client means, and which
//! names are valid. No I/O here, so every rule is unit-tested directly.

/// Longest nick or room name, in bytes (= characters: names are ASCII).
pub(crate) const MAX_NAME: usize = 32;

/// Whether `name` is a valid nick or room name: 1 to [`MAX_NAME`] characters
/// from `[A-Za-z0-9_-]`.
pub(crate) fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// What one line from a client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Input<'a> {
    /// An empty or all-blank line: ignored.
    Empty,
    /// Text for the room.
    Say(&'a str),
    /// `/nick NAME` (NAME not validated yet).
    Nick(&'a str),
    /// `/join ROOM` (ROOM not validated yet).
    Join(&'a str),
    /// `/who`.
    Who,
    /// `/rooms`.
    Rooms,
    /// `/me ACTION`.
    Me(&'a str),
    /// `/quit`.
    Quit,
    /// `/help`.
    Help,
    /// A known command used wrongly; holds its synopsis, e.g. `/nick NAME`.
    Usage(&'static str),
    /// An unknown command; holds the command word as typed, slash included.
    Unknown(&'a str),
}

/// Why a line was refused before it meant anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadLine {
    /// The bytes are not UTF-8.
    NotUtf8,
    /// The line holds a control character other than tab (an escape
    /// sequence would reach everyone else's terminal).
    Control,
}

/// Space or tab: what separates a command from its argument.
fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// Parses one line (without its `\n` and `\r`).
///
/// A line starting with `/` is a command; commands are case-insensitive.
/// `//text` says `/text` literally. Anything else is text for the room.
pub(crate) fn parse(line: &[u8]) -> Result<Input<'_>, BadLine> {
    let line = std::str::from_utf8(line).map_err(|_| BadLine::NotUtf8)?;
    if line.chars().any(|c| c.is_control() && c != '\t') {
        return Err(BadLine::Control);
    }
    if line.trim_matches(is_blank).is_empty() {
        return Ok(Input::Empty);
    }
    let Some(command) = line.strip_prefix('/') else {
        return Ok(Input::Say(line));
    };
    if command.starts_with('/') {
        return Ok(Input::Say(command));
    }
    let (word, arg) = match command.find(is_blank) {
        Some(at) => (&command[..at], command[at..].trim_matches(is_blank)),
        None => (command, ""),
    };
    let usage_if = |wrong: bool, input, synopsis: &'static str| {
        if wrong {
            Input::Usage(synopsis)
        } else {
            input
        }
    };
    let (missing, extra) = (arg.is_empty(), !arg.is_empty());
    Ok(match word.to_ascii_lowercase().as_str() {
        "nick" => usage_if(missing, Input::Nick(arg), "/nick NAME"),
        "join" => usage_if(missing, Input::Join(arg), "/join ROOM"),
        "me" => usage_if(missing, Input::Me(arg), "/me ACTION"),
        "who" => usage_if(extra, Input::Who, "/who"),
        "rooms" => usage_if(extra, Input::Rooms, "/rooms"),
        "quit" => usage_if(extra, Input::Quit, "/quit"),
        "help" => usage_if(extra, Input::Help, "/help"),
        _ => Input::Unknown(&line[..1 + word.len()]),
    })
}

/// The `/help` text, one `* `-prefixed line each, `\n`-terminated.
pub(crate) const HELP: &str = "\
* commands:
*   /nick NAME   change your nick (1-32 characters from A-Z a-z 0-9 _ -)
*   /join ROOM   leave this room and join ROOM (same characters; created if needed)
*   /who         list who is in this room
*   /rooms       list the rooms and how many are in each
*   /me ACTION   tell the room what you are doing
*   /quit        leave
*   /help        this list
* any other line goes to everyone else in the room; start it with // to say a line that begins with /
";

#[cfg(test)]
mod tests {
    use super::*;

    fn p(line: &str) -> Input<'_> {
        parse(line.as_bytes()).expect("a valid line")
    }

    #[test]
    fn names_are_1_to_32_of_the_allowed_characters() {
        for ok in [
            "a",
            "Z",
            "0",
            "_",
            "-",
            "guest-1",
            "Alice_B-2",
            &"x".repeat(32),
        ] {
            assert!(valid_name(ok), "{ok:?} should be valid");
        }
        for bad in [
            "",
            &"x".repeat(33),
            "a b",
            "a.b",
            "a/b",
            "é",
            "nick!",
            " a",
            "a\t",
            "ünïcode",
        ] {
            assert!(!valid_name(bad), "{bad:?} should be invalid");
        }
    }

    #[test]
    fn plain_text_is_said_as_is() {
        assert_eq!(p("hello world"), Input::Say("hello world"));
        assert_eq!(p("  indented"), Input::Say("  indented"));
        assert_eq!(p("tab\tinside"), Input::Say("tab\tinside"));
        assert_eq!(p("héllo ✓ 日本"), Input::Say("héllo ✓ 日本"));
        assert_eq!(p(" /nick x"), Input::Say(" /nick x"));
    }

    #[test]
    fn a_double_slash_says_a_line_that_starts_with_a_slash() {
        assert_eq!(p("//nick is a command"), Input::Say("/nick is a command"));
        assert_eq!(p("//"), Input::Say("/"));
    }

    #[test]
    fn blank_lines_are_ignored() {
        assert_eq!(p(""), Input::Empty);
        assert_eq!(p("   "), Input::Empty);
        assert_eq!(p(" \t "), Input::Empty);
    }

    #[test]
    fn commands_take_their_argument_trimmed() {
        assert_eq!(p("/nick alice"), Input::Nick("alice"));
        assert_eq!(p("/nick   alice  "), Input::Nick("alice"));
        assert_eq!(p("/nick\talice"), Input::Nick("alice"));
        assert_eq!(p("/join dev"), Input::Join("dev"));
        assert_eq!(p("/me waves at everyone"), Input::Me("waves at everyone"));
        // Validation of the name is the caller's: a space inside survives.
        assert_eq!(p("/nick a b"), Input::Nick("a b"));
    }

    #[test]
    fn commands_are_case_insensitive() {
        assert_eq!(p("/NICK Bob"), Input::Nick("Bob"));
        assert_eq!(p("/Who"), Input::Who);
        assert_eq!(p("/QUIT"), Input::Quit);
    }

    #[test]
    fn commands_without_arguments() {
        assert_eq!(p("/who"), Input::Who);
        assert_eq!(p("/rooms"), Input::Rooms);
        assert_eq!(p("/quit"), Input::Quit);
        assert_eq!(p("/help"), Input::Help);
        assert_eq!(p("/help  "), Input::Help);
    }

    #[test]
    fn a_missing_or_extra_argument_is_a_usage_error() {
        assert_eq!(p("/nick"), Input::Usage("/nick NAME"));
        assert_eq!(p("/nick   "), Input::Usage("/nick NAME"));
        assert_eq!(p("/join"), Input::Usage("/join ROOM"));
        assert_eq!(p("/me"), Input::Usage("/me ACTION"));
        assert_eq!(p("/who lobby"), Input::Usage("/who"));
        assert_eq!(p("/rooms x"), Input::Usage("/rooms"));
        assert_eq!(p("/quit now"), Input::Usage("/quit"));
        assert_eq!(p("/help me"), Input::Usage("/help"));
    }

    #[test]
    fn unknown_commands_name_the_word_as_typed() {
        assert_eq!(p("/x"), Input::Unknown("/x"));
        assert_eq!(p("/Dance wildly"), Input::Unknown("/Dance"));
        assert_eq!(p("/"), Input::Unknown("/"));
        assert_eq!(p("/ nick"), Input::Unknown("/"));
        assert_eq!(p("/nickname bob"), Input::Unknown("/nickname"));
        assert_eq!(p("/ünï"), Input::Unknown("/ünï"));
    }

    #[test]
    fn invalid_utf8_and_control_characters_are_refused() {
        assert_eq!(parse(b"caf\xe9"), Err(BadLine::NotUtf8));
        assert_eq!(parse(b"\xff/nick x"), Err(BadLine::NotUtf8));
        assert_eq!(parse(b"red \x1b[31m text"), Err(BadLine::Control));
        assert_eq!(parse(b"bell\x07"), Err(BadLine::Control));
        assert_eq!(parse(b"nul\0"), Err(BadLine::Control));
        assert_eq!(parse(b"del\x7f"), Err(BadLine::Control));
        assert_eq!(parse(b"a\rb"), Err(BadLine::Control));
        // C1 controls (U+0080..U+009F) too.
        assert_eq!(parse("c1\u{9b}31m".as_bytes()), Err(BadLine::Control));
    }

    #[test]
    fn help_lines_are_all_notices() {
        assert!(HELP.ends_with('\n'));
        assert!(HELP.lines().all(|l| l.starts_with("* ")));
        for cmd in ["/nick", "/join", "/who", "/rooms", "/me", "/quit", "/help"] {
            assert!(HELP.contains(cmd), "help does not mention {cmd}");
        }
    }
}
