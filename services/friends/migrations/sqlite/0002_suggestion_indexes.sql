-- Suggestions read bounded, indexed slices instead of every member: the verified members who
-- list each interest (in name order), and all verified members in name order.
CREATE TABLE member_interests (
    interest     TEXT NOT NULL,
    display_name TEXT NOT NULL,
    user_id      BLOB NOT NULL,
    PRIMARY KEY (interest, display_name, user_id)
);
CREATE INDEX member_interests_user ON member_interests (user_id);

INSERT INTO member_interests (interest, display_name, user_id)
SELECT DISTINCT listed.value, m.display_name, m.user_id
FROM members m, json_each(m.interests) listed
WHERE m.verified;

CREATE INDEX members_verified_by_name ON members (display_name, user_id) WHERE verified;
