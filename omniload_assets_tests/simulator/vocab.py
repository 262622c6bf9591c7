"""Word lists the data generator draws realistic values from."""

from __future__ import annotations

FIRST_NAMES = (
    "Sarah", "James", "Maria", "David", "Aisha", "Liam", "Chen", "Olivia", "Noah", "Fatima",
    "Lucas", "Emma", "Mateo", "Sofia", "Ethan", "Yuki", "Amara", "Jonas", "Priya", "Leo",
    "Zoe", "Omar", "Hannah", "Diego", "Ingrid", "Kwame", "Elena", "Marcus", "Nadia", "Tom",
)  # fmt: skip
LAST_NAMES = (
    "Mason", "Smith", "Garcia", "Chen", "Okafor", "Müller", "Johnson", "Rossi", "Kim", "Nguyen",
    "Silva", "Brown", "Khan", "Dubois", "Novak", "Williams", "Tanaka", "Larsen", "Patel", "O'Brien",
    "Jones", "Kowalski", "Martin", "Lopez", "Andersen", "Cohen", "Ivanova", "Mensah", "Park", "Lee",
)  # fmt: skip
EMAIL_DOMAINS = (
    "gmail.com", "yahoo.com", "outlook.com", "icloud.com", "hotmail.com", "klaviyo-demo.com",
    "proton.me", "example.com",
)  # fmt: skip
ORGANIZATIONS = ("Example Corporation", "Acme Inc.", "Globex", "Initech", "Umbrella Co", "Hooli")
TITLES = ("Regional Manager", "Engineer", "Buyer", "Founder", "Designer", "Student", "Analyst")
LOCALES = ("en-US", "en-GB", "de-DE", "fr-FR", "es-ES", "ja-JP", "pt-BR")
#: city, region, country, zip, latitude, longitude, timezone
CITIES = (
    ("New York", "NY", "United States", "10017", 40.7128, -74.006, "America/New_York"),
    ("San Francisco", "CA", "United States", "94102", 37.7749, -122.4194, "America/Los_Angeles"),
    ("Springfield", "Illinois", "United States", "62701", 39.7817, -89.6501, "America/Chicago"),
    ("Boston", "MA", "United States", "02108", 42.3601, -71.0589, "America/New_York"),
    ("London", "England", "United Kingdom", "EC1A 1BB", 51.5072, -0.1276, "Europe/London"),
    ("Berlin", "Berlin", "Germany", "10115", 52.52, 13.405, "Europe/Berlin"),
    ("Toronto", "ON", "Canada", "M5H 2N2", 43.6532, -79.3832, "America/Toronto"),
    ("Sydney", "NSW", "Australia", "2000", -33.8688, 151.2093, "Australia/Sydney"),
    ("São Paulo", "SP", "Brazil", "01000-000", -23.5505, -46.6333, "America/Sao_Paulo"),
    ("Tokyo", "Tokyo", "Japan", "100-0001", 35.6762, 139.6503, "Asia/Tokyo"),
)
STREETS = ("E 42nd St", "Market St", "Main St", "Baker Street", "Unter den Linden", "King St W")

#: metric name, integration (key, name, category)
METRICS = (
    ("Received Email", ("klaviyo", "Klaviyo", "Internal")),
    ("Opened Email", ("klaviyo", "Klaviyo", "Internal")),
    ("Clicked Email", ("klaviyo", "Klaviyo", "Internal")),
    ("Viewed Product", ("klaviyo", "Klaviyo", "Internal")),
    ("Active on Site", ("klaviyo", "Klaviyo", "Internal")),
    ("Added to Cart", ("api", "API", "API")),
    ("Started Checkout", ("shopify", "Shopify", "eCommerce")),
    ("Placed Order", ("shopify", "Shopify", "eCommerce")),
    ("Ordered Product", ("shopify", "Shopify", "eCommerce")),
    ("Received SMS", ("klaviyo", "Klaviyo", "Internal")),
    ("Clicked SMS", ("klaviyo", "Klaviyo", "Internal")),
    ("Received Push", ("klaviyo", "Klaviyo", "Internal")),
    ("Opened Push", ("klaviyo", "Klaviyo", "Internal")),
    ("Subscribed to List", ("klaviyo", "Klaviyo", "Internal")),
    ("Unsubscribed", ("klaviyo", "Klaviyo", "Internal")),
    ("Bounced Email", ("klaviyo", "Klaviyo", "Internal")),
    ("Fulfilled Order", ("shopify", "Shopify", "eCommerce")),
    ("Refunded Order", ("shopify", "Shopify", "eCommerce")),
    ("Cancelled Order", ("shopify", "Shopify", "eCommerce")),
    ("Form submitted by profile", ("klaviyo", "Klaviyo", "Internal")),
    ("Marked Email as Spam", ("klaviyo", "Klaviyo", "Internal")),
    ("Dropped Email", ("klaviyo", "Klaviyo", "Internal")),
)
#: relative frequency of events per metric name (unlisted metrics get no generated events)
EVENT_WEIGHTS = {
    "Received Email": 30,
    "Opened Email": 16,
    "Clicked Email": 6,
    "Viewed Product": 14,
    "Active on Site": 10,
    "Added to Cart": 5,
    "Started Checkout": 3,
    "Placed Order": 3,
    "Ordered Product": 3,
    "Received SMS": 4,
    "Clicked SMS": 1,
    "Received Push": 3,
    "Opened Push": 1,
    "Subscribed to List": 1,
}
PRODUCTS = (
    "Classic Tee", "Linen Shirt", "Trail Runner", "Wool Beanie", "Denim Jacket", "Canvas Tote",
    "Rain Shell", "Chino Shorts", "Merino Socks", "Leather Belt", "Puffer Vest", "Sun Hat",
    "Yoga Pants", "Hoodie", "Sandals", "Backpack", "Water Bottle", "Sunglasses",
)  # fmt: skip
CATEGORIES = (
    "Apparel", "Footwear", "Accessories", "Outerwear", "Bags", "Sale", "New Arrivals", "Kids",
    "Home", "Gifts", "Activewear", "Essentials",
)  # fmt: skip
SIZES = ("S", "M", "L", "XL", "XXL", "XS")
CURRENCIES = ("USD", "USD", "USD", "EUR", "GBP", "CAD")
SUBJECTS = (
    "Your weekend picks are here", "Last chance: 20% off", "New arrivals just dropped",
    "We miss you", "Your cart is waiting", "Thanks for your order!", "Summer Sale starts now",
)  # fmt: skip
CAMPAIGN_THEMES = (
    "Summer Sale", "Black Friday", "Weekly Newsletter", "New Arrivals", "Back in Stock",
    "Holiday Gift Guide", "VIP Early Access", "Flash Sale", "Product Launch", "Winback",
)  # fmt: skip
FLOW_NAMES = (
    "Welcome Series", "Abandoned Cart", "Browse Abandonment", "Post-Purchase Follow-up", "Winback",
    "Birthday", "Price Drop", "Back in Stock", "Sunset Unengaged", "VIP Thank You",
)  # fmt: skip
LIST_NAMES = (
    "Newsletter", "Preview List", "SMS Subscribers", "VIP Customers", "Sweepstakes Entrants",
    "Wholesale", "Event Attendees", "Pop-up Signups", "Test List", "Retail Store Signups",
)  # fmt: skip
SEGMENT_NAMES = (
    "Engaged (30 days)", "Repeat Purchasers", "Lapsed Customers", "High AOV", "Never Purchased",
    "Opened, Not Clicked", "Potential Purchasers", "Churn Risks", "New Subscribers", "Whales",
)  # fmt: skip
FORM_NAMES = (
    "Newsletter popup", "Exit intent", "Footer signup", "SMS flyout", "Spin to win", "Back in stock",
    "Embedded signup", "Quiz", "Teaser", "Holiday popup",
)  # fmt: skip
TEMPLATE_NAMES = (
    "Newsletter #1 (Images & Text)", "Welcome Email", "Abandoned Cart Reminder", "Order Confirmation",
    "Product Spotlight", "Holiday Promo", "Plain Text", "Winback Offer", "Shipping Update",
)  # fmt: skip
TAG_WORDS = (
    "promo", "newsletter", "q1", "q2", "retention", "acquisition", "sms", "holiday", "vip", "test",
    "evergreen", "seasonal", "launch", "loyalty", "brand",
)  # fmt: skip
COUPON_PREFIXES = ("WELCOME", "SUMMER", "VIP", "FREESHIP", "SAVE", "HOLIDAY", "BDAY", "FLASH")
COUPON_AMOUNTS = (5, 10, 15, 20, 25, 30, 40, 50)
IMAGE_WORDS = ("hero-banner", "logo", "product-shot", "lifestyle", "footer", "icon", "gif-promo")
COLORS = ("#2F80ED", "#EB5757", "#27AE60", "#F2C94C", "#9B51E0", None)
TIMEZONES = ("UTC", "America/New_York", "Europe/London", "America/Los_Angeles")
