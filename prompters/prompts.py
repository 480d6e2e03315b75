"""Prompt templates. Placeholders are filled with str.format.

Binary judge templates need {history} before {candidate}: the history part is
the prefix shared by all K candidates of a user (docs/performance.md).
{answer_instruction} is filled with DIRECT_ANSWER_INSTRUCTION or
REASONING_ANSWER_INSTRUCTION depending on --max_new_tokens.
"""

BINARY_PROMPT_TMPL_MOVIES = (
    "Here are the movies and TV shows the user watched recently, oldest first, "
    "with the user's rating out of 5:\n"
    "{history}\n\n"
    "Candidate movie:\n"
    "{candidate}\n\n"
    "Will the user like the candidate movie? {answer_instruction}"
)

BINARY_PROMPT_TMPL_OTHER = (
    "Here are the items the user purchased recently, oldest first, "
    "with the user's rating out of 5:\n"
    "{history}\n\n"
    "Candidate item:\n"
    "{candidate}\n\n"
    "Will the user like the candidate item? {answer_instruction}"
)

DIRECT_ANSWER_INSTRUCTION = 'Answer with "Yes" or "No".'
REASONING_ANSWER_INSTRUCTION = (
    'Think briefly about the user\'s taste, then finish with "Answer: Yes" or "Answer: No".'
)

# The score is read right after this text (direct mode: appended to the prompt;
# reasoning mode: generation stops once the model writes it).
ANSWER_PREFIX = "Answer:"
YES_TOKEN_TEXT = " Yes"
NO_TOKEN_TEXT = " No"

# One history line and one candidate block.
HISTORY_ITEM_TMPL = "{index}. {title} (rating: {rating}){text}"
CANDIDATE_ITEM_TMPL = "{title}{text}"

# R2ec ("RRec") prompts, byte for byte upstream's (docs/rrec.md; upstream's prompters/prompts.py +
# rrec_prompter.py). {emb}/{emb_end} are the answer tags; the user and item vectors are read at {emb}.
RREC_EMB_TOKEN = "<answer>"
RREC_EMB_END_TOKEN = "</answer>"
RREC_USER_PROMPT_TMPL = (
    "Analyze in depth and finally recommend next {category_singular} I might purchase inside {emb} and {emb_end}.\n"
    "For example, {emb}a product{emb_end}.\n"
    "\n"
    "Below is my historical {category_plural} purchases and ratings (out of 5):\n"
    "{history}"
)
# One history line per purchase, oldest first: "3d 4.5h ago: [Title] (5.0)" (rating as stored).
RREC_HISTORY_LINE_TMPL = "{ago}: [{title}] ({rating})"
RREC_ITEM_PROMPT_TMPL = (
    "Summarize key attributes of the following {category_singular} inside {emb} and {emb_end}.\n"
    "\n"
    "Title: {title}\nUser Rating: {average_rating}\nNumber of Buyers: {rating_number}\nDescription: {description}"
)
# The same without the two rating lines (train_rrec.py --no-item_rating_stats): on real Amazon data
# average_rating / rating_number are crawl-time totals that include the valid/test period.
RREC_ITEM_PROMPT_NO_RATING_STATS_TMPL = (
    "Summarize key attributes of the following {category_singular} inside {emb} and {emb_end}.\n"
    "\n"
    "Title: {title}\nDescription: {description}"
)
# (plural, singular) as upstream names them; upstream refuses any other category (we fall back to
# prompters.rrec_prompter.GENERIC_CATEGORY_NAMES, and add Movies_and_TV).
RREC_CATEGORY_NAMES = {
    "Video_Games": ("video games", "video game"),
    "CDs_and_Vinyl": ("CDs and vinyl", "CD or vinyl"),
    "Musical_Instruments": ("musical instruments", "musical instrument"),
    "Movies_and_TV": ("movies and TV", "movie or TV show"),
}

# Asking an API model to rank the candidates (compare_model/deepseek.py).
API_RANKING_PROMPT_TMPL = (
    "A user purchased and rated these items, oldest first (ratings out of 5):\n{history}\n\n"
    "Rank ALL of the following {n} candidate items from most to least likely to be the user's next "
    "purchase:\n{candidates}\n\n"
    "Reply with the candidate numbers only, best first, as a comma-separated list, e.g. 3, 1, 2."
)
API_RANKING_PROMPT_TMPL_MOVIES = (
    "A user watched and rated these movies and TV shows, oldest first (ratings out of 5):\n{history}\n\n"
    "Rank ALL of the following {n} candidates from most to least likely to be what the user watches "
    "next:\n{candidates}\n\n"
    "Reply with the candidate numbers only, best first, as a comma-separated list, e.g. 3, 1, 2."
)
# One candidate line of the API ranking prompt; {index} is the 1-based number the model answers with.
API_CANDIDATE_ITEM_TMPL = "{index}. {title}{text}"
