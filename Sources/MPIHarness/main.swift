// Placeholder: scenarios are added by the Communication work.
print("{}")
