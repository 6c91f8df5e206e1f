//! `--preset cpu` on `train hash` and `train metric`: the recipe for a 2-core CPU and a few
//! hundred labelled images (docs/results.md says how it was chosen). The paper's settings
//! stay the commands' defaults, for full-size training.
//!
//! A preset is a list of flags put in front of the user's own: a flag the user gave
//! explicitly is left as given, so any explicit flag overrides the preset. Clap cannot
//! tell a default from an explicit value after parsing, hence the expansion before it.

use std::ffi::OsString;

/// The flags each command's `cpu` preset sets, in order.
fn cpu_flags(command: &str) -> Option<&'static [(&'static str, &'static str)]> {
    match command {
        "hash" => Some(&[
            ("--arch", "densenet-tiny"),
            ("--size", "96"),
            ("--bits", "48"),
            ("--epochs", "12"),
            ("--batch-size", "32"),
            ("--lr", "3e-3"),
        ]),
        "metric" => Some(&[
            ("--arch", "densenet-tiny"),
            ("--size", "96"),
            ("--epochs", "12"),
            ("--batch-size", "20"),
            ("--lr", "1e-3"),
        ]),
        _ => None,
    }
}

/// `args` with `--preset cpu` of `train hash|metric` expanded: every preset flag that is
/// not given explicitly is inserted after the subcommand, and each setting is printed
/// (to stderr) with where it came from. Anything else is returned unchanged; an unknown
/// preset name is left for clap to refuse.
pub fn expand(args: Vec<OsString>) -> Vec<OsString> {
    let text: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let Some(train) = text.iter().position(|a| a == "train") else {
        return args;
    };
    let Some(command) = text.get(train + 1) else {
        return args;
    };
    let Some(flags) = cpu_flags(command) else {
        return args;
    };
    let preset = text
        .iter()
        .enumerate()
        .find_map(|(i, a)| match a.strip_prefix("--preset") {
            Some("") => text.get(i + 1).cloned(),
            Some(v) => v.strip_prefix('=').map(str::to_string),
            None => None,
        });
    if preset.as_deref() != Some("cpu") {
        return args;
    }
    let given = |flag: &str| {
        text.iter()
            .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
    };
    let mut out: Vec<OsString> = args[..=train + 1].to_vec();
    let mut shown = Vec::new();
    for (flag, value) in flags {
        if given(flag) {
            shown.push(format!("{flag} (given)"));
        } else {
            out.push(flag.into());
            out.push(value.into());
            shown.push(format!("{flag} {value}"));
        }
    }
    eprintln!("preset cpu: {}", shown.join(", "));
    out.extend_from_slice(&args[train + 2..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Vec<OsString> {
        s.split_whitespace().map(OsString::from).collect()
    }

    fn strings(a: Vec<OsString>) -> String {
        a.iter()
            .map(|x| x.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn preset_fills_what_is_not_given_and_explicit_flags_win() {
        let got = strings(expand(v(
            "medret train hash --data d --preset cpu --size 64 --lr=1e-3 --out o",
        )));
        assert_eq!(
            got,
            "medret train hash --arch densenet-tiny --bits 48 --epochs 12 --batch-size 32 \
             --data d --preset cpu --size 64 --lr=1e-3 --out o"
        );
        let got = strings(expand(v(
            "medret train metric --preset=cpu --data d --out o",
        )));
        assert!(
            got.starts_with(
                "medret train metric --arch densenet-tiny --size 96 --epochs 12 --batch-size 20 --lr 1e-3"
            ),
            "{got}"
        );
    }

    #[test]
    fn other_commands_and_presets_are_untouched() {
        for line in [
            "medret train hash --data d --out o",
            "medret train classify --preset cpu --data d",
            "medret train hash --preset paper --data d",
            "medret demo",
            "medret train",
        ] {
            assert_eq!(strings(expand(v(line))), line);
        }
    }
}
