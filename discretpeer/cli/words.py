"""The 256 words of invitation codes (``7-apple-river``): common, distinct English nouns in
lowercase ASCII (one byte each: two words are 16 bits of the code's password)."""

WORDS = (
    "acid", "acorn", "actor", "adult", "agent", "alarm", "album", "alley", "amber", "ample", "angel", "angle",
    "ankle", "apple", "april", "apron", "arena", "armor", "arrow", "aspen", "atlas", "attic", "audio", "award",
    "bacon", "badge", "bagel", "baker", "bamboo", "banjo", "barn", "basil", "beach", "beard", "berry",
    "bicycle", "bingo", "birch", "bison", "blade", "blanket", "bloom", "board", "boat", "bonus", "book",
    "boost", "bottle", "brain", "branch", "bread", "brick", "bridge", "broom", "brush", "bucket", "buffalo",
    "bugle", "cabin", "cable", "cactus", "camel", "candle", "canoe", "canvas", "carbon", "cargo", "carpet",
    "castle", "cedar", "cello", "chalk", "cheese", "cherry", "chess", "chief", "chimney", "circle", "clock",
    "cloud", "clover", "coast", "cobra", "cocoa", "comet", "coral", "cotton", "cougar", "crane", "crayon",
    "cricket", "crown", "cushion", "daisy", "dance", "delta", "denim", "desert", "diary", "diesel", "dingo",
    "dolphin", "donkey", "dragon", "drum", "eagle", "earth", "easel", "echo", "elbow", "elephant", "ember",
    "engine", "falcon", "feather", "fennel", "ferry", "fiddle", "finch", "flute", "forest", "fossil", "fox",
    "frog", "galaxy", "garden", "garlic", "giant", "ginger", "giraffe", "glacier", "globe", "goose", "grape",
    "gravel", "guitar", "hammer", "harbor", "harp", "hazel", "helmet", "heron", "hockey", "honey", "hornet",
    "igloo", "island", "ivory", "jacket", "jaguar", "jasmine", "jelly", "jigsaw", "jungle", "kayak", "kettle",
    "kitten", "koala", "ladder", "lagoon", "lamp", "lantern", "lemon", "lettuce", "lily", "lizard", "lobster",
    "magnet", "mango", "maple", "marble", "meadow", "melon", "mitten", "monkey", "moose", "mosaic", "motor",
    "muffin", "mustard", "nectar", "needle", "nickel", "noodle", "nutmeg", "oasis", "ocean", "olive", "onion",
    "orange", "orbit", "orchid", "otter", "oyster", "paddle", "panda", "papaya", "parrot", "peach", "peanut",
    "pebble", "pelican", "pepper", "piano", "pickle", "pigeon", "pillow", "pilot", "pine", "planet", "plum",
    "pocket", "polar", "poppy", "potato", "pretzel", "puffin", "pumpkin", "puzzle", "quail", "quartz", "quilt",
    "rabbit", "radar", "radio", "raven", "ribbon", "river", "robin", "rocket", "saddle", "salmon", "sandal",
    "satin", "saturn", "scarf", "shadow", "shark", "shell", "silver", "sketch", "sled", "sloth", "spider",
    "sponge", "squash", "statue", "summit", "sunset", "swan", "table", "tiger", "tomato", "tulip", "turtle",
    "violin",
)

assert len(WORDS) == len(set(WORDS)) == 256, "256 distinct words"
