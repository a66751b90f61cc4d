-- How many of each countable thing happened on each UTC day (signups accepted, logins…),
-- added to in the transaction of the thing itself and never deleted by retention, so a past
-- day's report stays what it was.
CREATE TABLE daily_figures (
    day   TEXT   NOT NULL,
    name  TEXT   NOT NULL,
    count BIGINT NOT NULL,
    PRIMARY KEY (day, name)
);
