"""Prompts and advice for the text flavour: 10 topics x 8 subjects x 3 questions = 240 prompts.

Each topic has question templates, subjects, advice steps (imperative phrases that fit every
subject of the topic), a caution specific to the topic, and a concrete example.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topic:
    """One area of everyday advice."""

    name: str
    questions: tuple[str, ...]
    subjects: tuple[str, ...]
    steps: tuple[str, ...]
    caution: str
    example: str


TOPICS: tuple[Topic, ...] = (
    Topic(
        "skills",
        ("How can I get better at {s}?", "What is the best way to start learning {s}?",
         "I keep giving up on {s}. Any advice?"),
        ("the guitar", "Spanish", "chess", "drawing", "touch typing", "photography",
         "public speaking", "the piano"),
        ("practise {s} for twenty minutes every day instead of once a week for hours",
         "pick one small, concrete goal for each week",
         "find a teacher, a course or a friend who is a little ahead of you",
         "record yourself now and again so you can hear or see your progress",
         "focus on the basics before moving on to advanced material",
         "make it easy to start by keeping your materials within reach"),
        "Progress with {s} is rarely steady, and plateaus are normal, so judge yourself over "
        "months rather than days.",
        "For example, ten minutes of {s} before breakfast is easier to keep up than an hour "
        "on Sunday."),
    Topic(
        "cooking",
        ("How do I make good {s}?", "What am I doing wrong with {s}?",
         "Can you give me tips for cooking {s} at home?"),
        ("rice", "pasta", "an omelette", "bread", "vegetable soup", "roasted vegetables",
         "pancakes", "a curry"),
        ("read the whole recipe for {s} before you start",
         "measure the ingredients and set them out first",
         "taste as you go and adjust the salt at the end",
         "use a heavy pan so the heat spreads evenly",
         "keep notes on what you changed each time",
         "give it your full attention for the first few minutes"),
        "Check that anything with meat, eggs or fish is cooked through, and keep raw and "
        "cooked food apart.",
        "For example, a pinch of salt and a squeeze of lemon at the end lifts most dishes."),
    Topic(
        "fitness",
        ("How should I get started with {s}?", "How can I improve at {s}?",
         "What's a good weekly plan for {s}?"),
        ("running", "swimming", "cycling", "yoga", "strength training", "hiking", "rowing",
         "climbing"),
        ("start with two or three short sessions of {s} a week",
         "increase the load by no more than about ten percent a week",
         "warm up for five minutes before each session",
         "schedule a rest day after every hard day",
         "track what you did so you can see the trend",
         "sleep well and eat enough protein to recover"),
        "If you have a health condition or feel pain, stop and check with a doctor before you "
        "push on.",
        "For example, three easy twenty-minute sessions of {s} in the first week is plenty."),
    Topic(
        "money",
        ("How can I get better at {s}?", "What's a realistic plan for {s}?",
         "I'm struggling with {s}. Where do I begin?"),
        ("saving for a holiday", "sticking to a budget", "paying off a credit card",
         "building an emergency fund", "saving for a car", "cutting grocery costs",
         "tracking my spending", "saving for a deposit"),
        ("write down every expense for one month to see where the money goes",
         "set up an automatic transfer on payday",
         "pick a target amount and a date for {s}",
         "cancel subscriptions you have not used in the last month",
         "keep a small buffer so one surprise bill does not undo your plan",
         "review your progress on the same day each month"),
        "Everyone's situation is different; for debts or investments, a qualified financial "
        "adviser can check the plan against your circumstances.",
        "For example, moving fifty pounds on payday adds up to six hundred in a year."),
    Topic(
        "home",
        ("What's the easiest way to handle {s}?", "Any tips for {s}?",
         "How do I go about {s} without wasting a weekend?"),
        ("cleaning the oven", "organising a wardrobe", "painting a room",
         "fixing a squeaky door", "clearing out the garage", "descaling a kettle",
         "keeping the kitchen tidy", "removing mould from a bathroom"),
        ("gather everything you need for {s} before you begin",
         "break the job into parts you can finish in half an hour",
         "start with the area that bothers you most",
         "put on music or a podcast to make the time pass",
         "get rid of anything you have not used in a year",
         "finish each part completely before moving on"),
        "Open a window when you use strong cleaning products, never mix bleach with other "
        "cleaners, and wear gloves.",
        "For example, a box for items to donate by the door makes clearing out much faster."),
    Topic(
        "work",
        ("How do I prepare for {s}?", "What makes {s} go well?",
         "I'm nervous about {s}. What should I do?"),
        ("a job interview", "an exam", "a presentation", "writing a cover letter",
         "running a meeting", "asking for a raise", "a performance review",
         "starting a new job"),
        ("find out exactly what is expected of you for {s}",
         "write down the three points you most want to get across",
         "rehearse out loud, ideally with a friend",
         "prepare answers for the questions you fear most",
         "get a good night's sleep and arrive early",
         "send a short thank-you note afterwards"),
        "Expectations differ between fields and employers, so check the details with someone "
        "who knows yours.",
        "For example, practising your opening two minutes until they feel easy calms the "
        "nerves for the rest."),
    Topic(
        "garden",
        ("How do I grow {s}?", "What is the trick to keeping {s} healthy?",
         "What are the basics of looking after {s}?"),
        ("tomatoes", "basil", "succulents", "roses", "a lawn", "strawberries", "houseplants",
         "chillies"),
        ("give {s} as much light as the spot allows",
         "water deeply but less often, and let the top of the soil dry out",
         "use a pot or bed that drains well",
         "feed lightly during the growing season",
         "check the leaves weekly for pests",
         "remove dead or yellow leaves as you see them"),
        "Some plants and fertilisers are toxic to pets and children, so check the labels and "
        "keep them out of reach.",
        "For example, pushing a finger into the soil up to the first knuckle tells you if it "
        "needs water."),
    Topic(
        "travel",
        ("Any advice for {s}?", "How do I make {s} easier?",
         "What should I know about {s}?"),
        ("packing for a week away", "dealing with jet lag", "travelling on a budget",
         "a long flight", "a road trip", "visiting a new city", "a first camping trip",
         "travelling with children"),
        ("make a list for {s} a few days ahead and tick it off",
         "pack one day's essentials in your hand luggage",
         "keep copies of your documents on your phone and on paper",
         "plan one thing per day and leave the rest open",
         "drink plenty of water and move around when you can",
         "check the local rules and opening times before you go"),
        "Check official travel advice and your insurance before you go, as rules and "
        "conditions can change quickly.",
        "For example, rolling clothes instead of folding them saves space and creases."),
    Topic(
        "pets",
        ("How do I deal with {s}?", "What's the best way to handle {s}?",
         "I need help with {s}. What works?"),
        ("a new puppy", "a cat scratching the sofa", "a shy rescue dog", "a noisy parrot",
         "a dog that pulls on the lead", "a cat that won't use the litter tray",
         "a bored rabbit", "a first aquarium"),
        ("keep a fixed daily routine for feeding, play and rest",
         "reward the behaviour you want straight away",
         "give {s} a safe, quiet space of its own",
         "be patient and repeat short training sessions",
         "make sure there is enough exercise and play",
         "stay calm, since animals pick up on stress"),
        "A sudden change in behaviour can be a sign of illness, so a vet visit is worth it if "
        "things do not improve.",
        "For example, five minutes of training twice a day works better than one long session."),
    Topic(
        "tech",
        ("How do I fix {s}?", "What can I do about {s}?", "Any quick wins for {s}?"),
        ("a slow laptop", "photos I have never backed up", "weak passwords",
         "weak wifi at home", "a phone battery that dies by lunch", "an overflowing inbox",
         "a printer that won't connect", "a cluttered desktop"),
        ("restart the device and install pending updates first",
         "remove programs and files you no longer use",
         "write down what you changed so you can undo it",
         "keep one backup on an external drive and one online",
         "use a password manager and turn on two-step sign-in",
         "search for the exact error message you see"),
        "Back up anything important before you change settings, and only download software "
        "from sources you trust.",
        "For example, moving the router off the floor and away from walls often improves wifi."),
)


def prompts() -> list[tuple[str, str, Topic]]:
    """Every (prompt_id, prompt text, topic), in a fixed order."""
    out = []
    for topic in TOPICS:
        for si, subject in enumerate(topic.subjects):
            for qi, question in enumerate(topic.questions):
                out.append((f"{topic.name}-{si}-{qi}", question.format(s=subject), topic))
    return out


def subject_of(prompt_id: str) -> str:
    """The subject a prompt id refers to."""
    name, si, _ = prompt_id.rsplit("-", 2)
    topic = next(t for t in TOPICS if t.name == name)
    return topic.subjects[int(si)]
