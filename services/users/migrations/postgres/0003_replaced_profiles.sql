-- Profiles that a newer signup for their address replaced while they were unverified (someone
-- may have signed up first with another person's address), each with the profile that replaced
-- it. A profile is replaced at most once, so replacements form one chain per address; a
-- replaced id is never given a profile again.
CREATE TABLE replaced_profiles (
    id          UUID PRIMARY KEY,
    replaced_by UUID NOT NULL
);
CREATE INDEX replaced_profiles_by ON replaced_profiles (replaced_by);
