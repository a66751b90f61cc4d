//! Interests as every service stores and compares them: trimmed, lower-cased, without repeats,
//! in the order given, so `Chess` and ` chess` are one interest everywhere (friends matches
//! people on them, from the profile users keeps and from the signup event alike).

/// `items`, normalised. Which interests are acceptable is the users service's rule.
pub fn normalise(items: &[String]) -> Vec<String> {
    let mut interests: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        let interest = item.trim().to_lowercase();
        if !interests.contains(&interest) {
            interests.push(interest);
        }
    }
    interests
}

#[cfg(test)]
mod tests {
    #[test]
    fn interests_are_trimmed_lower_cased_and_kept_once_in_their_order() {
        let given = [" Chess", "sailing ", "chess", "Go"].map(String::from);
        assert_eq!(super::normalise(&given), ["chess", "sailing", "go"]);
    }
}
