-- Database per service (factor IV): each service owns one, reached by its own DATABASE_URL.
CREATE DATABASE dozen_signup;
CREATE DATABASE dozen_users;
CREATE DATABASE dozen_passwords;
CREATE DATABASE dozen_verification;
CREATE DATABASE dozen_friends;
