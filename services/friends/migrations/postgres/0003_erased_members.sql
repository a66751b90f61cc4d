-- Members who deleted their account: the id alone, which names no one once everything else
-- about them is erased. Events about them that arrive late (the bus may deliver out of order)
-- must not bring them back as members.
CREATE TABLE erased_members (
    user_id UUID PRIMARY KEY NOT NULL
);
