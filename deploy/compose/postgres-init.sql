-- Database per service (factor IV), each owned by the service's own role: a service can
-- reach its own database and no other. The passwords come from the postgres container's
-- environment (<SERVICE>_DB_PASSWORD, see compose.yaml).
\getenv signup_password SIGNUP_DB_PASSWORD
\getenv users_password USERS_DB_PASSWORD
\getenv passwords_password PASSWORDS_DB_PASSWORD
\getenv verification_password VERIFICATION_DB_PASSWORD
\getenv friends_password FRIENDS_DB_PASSWORD

CREATE ROLE signup LOGIN PASSWORD :'signup_password';
CREATE ROLE users LOGIN PASSWORD :'users_password';
CREATE ROLE passwords LOGIN PASSWORD :'passwords_password';
CREATE ROLE verification LOGIN PASSWORD :'verification_password';
CREATE ROLE friends LOGIN PASSWORD :'friends_password';

CREATE DATABASE dozen_signup OWNER signup;
CREATE DATABASE dozen_users OWNER users;
CREATE DATABASE dozen_passwords OWNER passwords;
CREATE DATABASE dozen_verification OWNER verification;
CREATE DATABASE dozen_friends OWNER friends;

-- Only the owner (and the superuser) may connect to each.
REVOKE CONNECT, TEMPORARY ON DATABASE dozen_signup, dozen_users, dozen_passwords, dozen_verification, dozen_friends FROM PUBLIC;
